"""Rank 0's view of a running training: the periodic log line and the tqdm bar."""
import logging
import time
from typing import List

import torch

logger = logging.getLogger(__name__)


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"peak mem {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    import resource  # POSIX only: imported where it is used

    return f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"


class ProgressReport:
    """Logs loss, steps/s, images/s, peak memory and lr over the steps since the last report.

    ``step``: the step training starts from; ``bar``: show a tqdm bar up to ``total_steps``.
    """

    def __init__(self, step: int, total_steps: int, global_batch_size: int, device: torch.device, bar: bool):
        self.global_batch_size = global_batch_size
        self.device = device
        self.losses: List[float] = []  # flushed losses since the last report
        self.last_step, self.last_time = step, time.perf_counter()
        self.last_loss = float("nan")
        self.bar = None
        if bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=step, desc="train", dynamic_ncols=True)

    def tick(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def log(self, step: int, lr: float) -> None:
        now = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            now = time.perf_counter()
        steps = step - self.last_step
        if steps <= 0 or not self.losses:
            return
        avg = sum(self.losses) / len(self.losses)
        sps = steps / max(now - self.last_time, 1e-9)
        logger.info(
            f"(step={step:07d}) loss {avg:.4f} | {sps:.2f} steps/s | {sps * self.global_batch_size:.1f} images/s | "
            f"{peak_memory(self.device)} | lr {lr:.2e}"
        )
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{avg:.4f}", refresh=False)
        self.last_loss = avg
        self.losses = []
        self.last_step, self.last_time = step, now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
