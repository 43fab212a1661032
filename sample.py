"""Sample images from a train.py checkpoint (EMA weights by default): a grid PNG and a folder of PNGs.

    python sample.py --ckpt results/000-XSwin-digits --num-samples 100 --cfg-scale 1.5
    python sample.py --help

The implementation lives in xswin_fast.cli.sample (importable: main(argv) -> exit code).
"""
import sys

from xswin_fast.cli.sample import main

if __name__ == "__main__":
    sys.exit(main())
