"""The command lines (``train.py``, ``sample.py``, ``evaluate.py`` at the repository root call
these): argparse to library calls, each an importable ``main(argv) -> exit status``."""
