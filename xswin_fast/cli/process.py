"""The process-wide setup shared by sample.py and evaluate.py: CPU threads, log lines on stdout,
and how progress is shown."""
import logging
import sys
from typing import Optional, Union

import torch

from ..runs.launch import PACKAGE_LOGGER, resolve_threads


def apply_threads(threads: Union[int, str]) -> int:
    """--threads N, 0 (torch's default) or "auto" (as train.py: one thread when the load average
    shows other work); returns the thread count in use."""
    n = resolve_threads(threads)
    if n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


class _StdoutHandler(logging.StreamHandler):
    """A StreamHandler on whatever ``sys.stdout`` is when a record is written: a redirection (a
    notebook, pytest's capture) may replace the stream after the handler is made, and closed."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


def log_to_stdout() -> None:
    """The package's INFO messages (progress lines, the digits extractor's training) on stdout."""
    log = logging.getLogger(PACKAGE_LOGGER)
    if not any(getattr(h, "_xswin_cli", False) for h in log.handlers):
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", datefmt="%H:%M:%S"))
        handler._xswin_cli = True
        log.addHandler(handler)
    log.setLevel(logging.INFO)


def progress_mode(flag: Optional[bool]) -> str:
    """--progress / --no-progress / neither as ``generate``'s progress: a tqdm bar when asked for
    (default: when stderr is a terminal), else k/N, elapsed and ETA log lines."""
    bar = sys.stderr.isatty() if flag is None else flag
    return "bar" if bar else "log"
