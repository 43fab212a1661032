"""Progress of a long job as log lines (k/N, elapsed, ETA): what a log file or a pipe can show,
where a tqdm bar (carriage returns) cannot."""
import logging
import time
from typing import Callable, Optional

logger = logging.getLogger(__name__)


def format_seconds(seconds: float) -> str:
    """12 s, 3 min 05 s, 1 h 02 min."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class ProgressLines:
    """Counts ``total`` units of work (int) and logs ``desc: k/N unit (p%), elapsed E, ETA T`` at
    most every ``every_s`` seconds, and once when done. ``log``: where lines go (default: this
    module's logger at INFO)."""

    def __init__(self, total: int, desc: str, unit: str = "", every_s: float = 30.0,
                 log: Optional[Callable[[str], None]] = None):
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.log = log or logger.info
        self.done = 0
        self.start = self.last = time.perf_counter()

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.done >= self.total or now - self.last >= self.every_s:
            self.last = now
            elapsed = now - self.start
            eta = elapsed / self.done * (self.total - self.done)
            self.log(
                f"{self.desc}: {self.done}/{self.total}{' ' + self.unit if self.unit else ''} "
                f"({100 * self.done / self.total:.0f}%), elapsed {format_seconds(elapsed)}, ETA {format_seconds(eta)}"
            )
