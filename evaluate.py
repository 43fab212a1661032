"""FID, Inception Score, KID and precision/recall (torch-fidelity) of a checkpoint's samples
against the run's held-out split, fully offline.

    python evaluate.py --ckpt results/000-XSwin-digits          # digits: the project's own feature extractor
    python evaluate.py --ckpt results/001-XSwin-S-2 --inception-weights weights-inception-2015-12-05-6726825d.pth
    python evaluate.py --help

The implementation lives in xswin_fast.cli.evaluate (importable: main(argv) -> exit code).
"""
import sys

from xswin_fast.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
