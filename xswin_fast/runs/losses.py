"""A run's per-step losses: kept on the device between flushes, averaged over ranks, checked to
be finite, appended to ``losses.csv`` and plotted into ``loss.png``."""
import csv
import math
import os
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from .distributed import all_reduce_mean

FIELDS = ("step", "loss", "mse", "vb", "grad_norm")


class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int, value: float):
        super().__init__(f"loss is {value} at step {step}")
        self.step, self.value = step, value


class LossLog:
    """``losses.csv`` of a run. ``write``: whether this process writes it (rank 0)."""

    def __init__(self, path: Path, write: bool):
        self.path = Path(path)
        self.write = write
        self.pending: List[torch.Tensor] = []  # (4,) tensors: loss, mse, vb, grad norm of one step

    def add(self, stats: torch.Tensor) -> None:
        self.pending.append(stats)

    def flush(self, step: int) -> List[float]:
        """Average the pending steps (the last is ``step``) over ranks, append them to the file and
        return their losses; raise :class:`NonFiniteLoss` at the first non-finite one (the steps
        before it are written)."""
        if not self.pending:
            return []
        rows = all_reduce_mean(torch.stack(self.pending).float()).cpu().tolist()
        self.pending = []
        first = step - len(rows) + 1
        good, bad = [], None
        for k, (loss, mse, vb, gn) in enumerate(rows):
            if not math.isfinite(loss):
                bad = (first + k, loss)
                break
            good.append({"step": first + k, "loss": f"{loss:.6g}", "mse": f"{mse:.6g}", "vb": f"{vb:.6g}", "grad_norm": f"{gn:.6g}"})
        if self.write and good:
            self._write(good, mode="a")
        if bad is not None:
            raise NonFiniteLoss(*bad)
        return [float(r["loss"]) for r in good]

    def truncate(self, step: int) -> None:
        """Drop the rows after ``step`` (logged after the checkpoint a run resumes from)."""
        if self.write:
            self._write([r for r in self.read() if int(r["step"]) <= step], mode="w")

    def read(self) -> List[Dict[str, str]]:
        if not self.path.is_file():
            return []
        with open(self.path) as f:
            return list(csv.DictReader(f))

    def _write(self, rows: List[dict], mode: str) -> None:
        new = mode == "w" or not self.path.is_file()
        with open(self.path, mode, newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            if new:
                w.writeheader()
            for r in rows:
                w.writerow(r)


def plot_loss_curve(csv_path, out_path, smooth: int = 0) -> Optional[Path]:
    """Plot per-step loss (and its moving average) from a ``losses.csv`` to a PNG."""
    steps, loss, mse = [], [], []
    if not os.path.isfile(csv_path):
        return None
    with open(csv_path) as f:
        for row in csv.DictReader(f):
            steps.append(int(row["step"]))
            loss.append(float(row["loss"]))
            mse.append(float(row["mse"]))
    if not steps:
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    smooth = smooth or max(1, len(steps) // 50)
    kernel = np.ones(smooth) / smooth

    def ma(v):
        v = np.asarray(v)
        if len(v) < smooth:
            return np.arange(len(v)), v
        return np.arange(smooth - 1, len(v)), np.convolve(v, kernel, mode="valid")

    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    s = np.asarray(steps)
    ax.plot(s, loss, color="tab:blue", alpha=0.25, lw=0.8, label="loss (per step)")
    i, m = ma(loss)
    ax.plot(s[i], m, color="tab:blue", lw=1.8, label=f"loss = mse + vb (mean of {smooth})")
    i, m = ma(mse)
    ax.plot(s[i], m, color="tab:orange", lw=1.4, label=f"mse (mean of {smooth})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_path)
    plt.close(fig)
    return Path(out_path)
