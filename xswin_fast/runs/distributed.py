"""torchrun / DDP helpers: one code path for a single process and for many.

``setup()`` initialises the default process group when torchrun's environment is present
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``): NCCL on CUDA, gloo on the CPU. Without it every helper
degrades to the single-process case.
"""
import datetime
import os
import re
from dataclasses import dataclass
from typing import Any, List, Optional

import torch
import torch.distributed as dist

from .config import ConfigError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def seed(self, global_seed: int) -> int:
        """This rank's seed: ``global_seed * world_size + rank`` (DiT's)."""
        return global_seed * self.world_size + self.rank


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def resolve_device(spec: Optional[str], local_rank: int = 0) -> torch.device:
    """--device as a torch.device: None or "auto" (cuda:LOCAL_RANK if available, else cpu), "cpu",
    "cuda" (cuda:LOCAL_RANK) or "cuda:N". ConfigError for anything else, or CUDA without a GPU."""
    if spec in (None, "auto"):
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?", spec):
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    dev = torch.device(spec)
    if dev.type == "cpu":
        return dev
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise ConfigError(f"--device {spec}: no CUDA GPU is available on this machine (use --device cpu)")
    if dev.index is None:
        return torch.device("cuda", local_rank % count)
    if dev.index >= count:
        raise ConfigError(f"--device {spec}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    return dev


def setup(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Pick the device (see :func:`resolve_device`) and, under torchrun, join the process group."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistInfo(0, 1, local_rank, dev)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = dict(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
        if dev.type == "cuda":
            kwargs["device_id"] = dev
        dist.init_process_group(**kwargs)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over all ranks (in place on a copy); identity in a single process."""
    if not is_initialized():
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / dist.get_world_size()


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if not is_initialized():
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def all_gather_object(obj: Any) -> List[Any]:
    """Every rank's ``obj``, in rank order (a one-element list in a single process)."""
    if not is_initialized():
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
