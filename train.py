"""Train a class-conditional diffusion backbone of any registered family (XSwin, USwin, DiT, UViT,
DiffiT, LatentDiffiT, ASCEND, IU-ViT) with the eps or the flow objective.

    python train.py                      # built-in job: a small XSwin on sklearn's digits, CPU, minutes
    python train.py --help               # every flag; docs/training.md has worked examples

The implementation lives in xswin_fast.cli.train (importable: main(argv) -> exit code).
"""
import sys

from xswin_fast.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
