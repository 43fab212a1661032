"""One training process from start to end: process group, CPU threads, run directory, logging,
then the :class:`~.trainer.Trainer`."""
import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Union

import torch

from ..ops.dispatch import interpreter_active
from .config import ConfigError, TrainConfig
from .distributed import DistInfo, cleanup, setup
from .run_dir import open_run_dir
from .trainer import Trainer

logger = logging.getLogger(__name__)
PACKAGE_LOGGER = "xswin_fast"  # the run's log collects every xswin_fast module's messages


def resolve_threads(value: Union[int, str, None], processes_per_node: int = 1) -> int:
    """--threads (validated by the config): N (0 = leave torch's default) or "auto": 0 when the CPU
    looks idle (1-minute load average below half the cores left for this process), else 1."""
    if value != "auto":
        return int(value or 0)
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - platforms without getloadavg
        return 1
    return 0 if load < 0.5 * max(cores - processes_per_node + 1, 1) else 1


def configure_torch(config: TrainConfig, dist: DistInfo) -> TrainConfig:
    """Apply --threads and --tf32; on the CPU the thread count is stored in the returned config,
    because CPU results depend on it and a resume must reuse it."""
    threads = resolve_threads(config.threads, dist.world_size)
    if threads:
        torch.set_num_threads(threads)
    if dist.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = config.tf32
        torch.backends.cudnn.allow_tf32 = config.tf32
    if dist.device.type == "cpu":
        config = replace(config, threads=torch.get_num_threads())
    return config


@contextmanager
def run_logging(run_dir: Path, dist: DistInfo) -> Iterator[None]:
    """Rank 0 logs INFO to stdout and ``run_dir/log.txt``; other ranks log warnings to stderr."""
    log = logging.getLogger(PACKAGE_LOGGER)
    previous_level = log.level
    log.setLevel(logging.INFO if dist.is_main else logging.WARNING)
    if dist.is_main:
        fmt = logging.Formatter("[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
        handlers = [logging.StreamHandler(sys.stdout), logging.FileHandler(run_dir / "log.txt")]
    else:
        fmt = logging.Formatter(f"[rank {dist.rank}] %(levelname)s %(message)s")
        handlers = [logging.StreamHandler(sys.stderr)]
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)
    try:
        yield
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()
        log.setLevel(previous_level)


def train(config: TrainConfig, resume: Optional[Dict[str, Any]] = None) -> int:
    """Run ``config`` (continuing checkpoint ``resume``, if given) in this process, under torchrun
    one of many. Returns the exit status (see :meth:`Trainer.fit`)."""
    dist = setup(config.device)
    try:
        if config.backend == "triton" and dist.device.type != "cuda" and not interpreter_active():
            raise ConfigError(f"--backend triton needs a CUDA device, and the run trains on {dist.device} (use --backend "
                              "auto or torch, or set TRITON_INTERPRET=1 to interpret the kernels on the CPU)")
        with open_run_dir(config, dist) as run_dir, run_logging(run_dir, dist):
            config = configure_torch(config, dist)
            logger.info(
                f"run directory {run_dir} | world size {dist.world_size} | device {dist.device} | seed {dist.seed(config.global_seed)}"
                + (f" | {torch.get_num_threads()} CPU threads" if dist.device.type == "cpu" else "")
            )
            return Trainer(config, run_dir, dist, resume).fit()
    finally:
        cleanup()
