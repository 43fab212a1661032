"""A user's mistake on a command line ends in one line on stderr and a non-zero exit status, never
in a traceback (a traceback is for bugs)."""
import argparse
import math
import os
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

from ..checkpoints import CheckpointError
from ..data import DataError
from ..runs.config import ConfigError

# what a command line reports as the user's mistake, or the machine's (a full disk, a read-only
# folder, a missing file): everything else is a bug and keeps its traceback
USER_ERRORS = (ConfigError, CheckpointError, DataError, OSError)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``prog: error: message`` (exit status 2), without the
    usage block (train.py's alone is 60 lines; ``--help`` shows it)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


@contextmanager
def exit_on_user_error(prog: str) -> Iterator[None]:
    """Turn :data:`USER_ERRORS` into ``SystemExit("prog: error: ...")`` (one line, status 1)."""
    try:
        yield
    except USER_ERRORS as exc:
        raise SystemExit(f"{prog}: error: {one_line(exc)}") from None


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low``."""

    def parse(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value!r}") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {n}")
        return n

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def finite_float(value: str) -> float:
    """argparse type: a finite number (no nan, no inf)."""
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {value}")
    return x


def positive_float(value: str) -> float:
    """argparse type: a finite number > 0."""
    x = finite_float(value)
    if x <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return x


def output_folder(path: Optional[str], flag: str = "--out") -> None:
    """Refuse an output folder that is an existing file, before any work is done."""
    if path and os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{flag} {path} is a file, not a folder")
