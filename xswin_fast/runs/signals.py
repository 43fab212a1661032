"""SIGTERM / SIGINT during training: finish the step, save, exit 0."""
import signal
import threading
from typing import Optional


class SignalCatcher:
    """A context in which SIGTERM and SIGINT only set ``signum`` (the loop saves and exits); a
    second signal acts normally (KeyboardInterrupt). Outside the main thread it catches nothing."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous = {}

    def __enter__(self) -> "SignalCatcher":
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt(f"second signal {signum}")
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._previous.items():
            signal.signal(s, h)
        return False

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "signal on another rank"
