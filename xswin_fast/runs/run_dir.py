"""Run directories: creating (auto-numbered) ones, and loading a run's model back for sampling.

A run directory holds ``config.json``, ``log.txt``, ``losses.csv``, ``split.json``,
``checkpoints/NNNNNNN.pt``, ``samples/`` and, at the end, ``samples.png`` and ``loss.png``.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from ..checkpoints import CheckpointError, list_checkpoints, load_newest_checkpoint
from ..diffusion import Diffusion
from ..models import create_model
from ..vae import LatentCodec, load_vae
from .config import ConfigError, TrainConfig
from .distributed import DistInfo, barrier, broadcast_object


def run_dir_of(checkpoint: Path) -> Path:
    """The run directory of a checkpoint file (``RUN/checkpoints/N.pt`` or ``RUN/N.pt``)."""
    p = Path(checkpoint).parent
    return p.parent if p.name == "checkpoints" else p


def _next_numbered(results_dir: Path, model: str) -> Path:
    """``RESULTS_DIR/NNN-MODEL`` (DiT's scheme), NNN one past the numbered directories there."""
    results_dir.mkdir(parents=True, exist_ok=True)
    index = len([d for d in results_dir.iterdir() if d.is_dir() and d.name[:3].isdigit()])
    name = model.replace("/", "-")
    while (results_dir / f"{index:03d}-{name}").exists():
        index += 1
    return results_dir / f"{index:03d}-{name}"


def create_run_dir(config: TrainConfig, dist: DistInfo) -> Path:
    """The run directory: ``--run-dir``, the resumed checkpoint's, or a new numbered one (chosen
    on rank 0 and broadcast). A new run refuses a directory that already holds checkpoints."""
    if config.run_dir:
        run_dir = Path(config.run_dir)
    elif config.resume:
        run_dir = run_dir_of(Path(config.resume))
    else:
        chosen = str(_next_numbered(Path(config.results_dir), config.model)) if dist.is_main else None
        run_dir = Path(broadcast_object(chosen))
    if config.resume is None and list_checkpoints(run_dir / "checkpoints"):
        raise ConfigError(f"{run_dir} already holds checkpoints: pass --resume {run_dir} to continue it, or pick another --run-dir")
    if dist.is_main:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run_dir / "samples").mkdir(exist_ok=True)
    barrier()
    return run_dir


@dataclass
class SamplingRun:
    """A trained model ready to sample: backbone (eval mode), diffusion, optional VAE.

    ``data``: the checkpoint's data description (classes, sizes, channels); ``args``: its run config.
    """

    model: torch.nn.Module
    diffusion: Diffusion
    codec: Optional[LatentCodec]
    data: Dict[str, Any]
    args: Dict[str, Any]
    step: int
    checkpoint: Path
    device: torch.device

    @property
    def run_dir(self) -> Path:
        return run_dir_of(self.checkpoint)

    @property
    def latent_shape(self) -> Tuple[int, int, int]:
        """(C, H, W) of the space the model samples in (pixels, or VAE latents)."""
        d = self.data
        return (d["latent_channels"], d["latent_size"], d["latent_size"])


def load_run(ckpt: str, device: Optional[str] = None, use_ema: bool = True, backend: Optional[str] = None) -> SamplingRun:
    """Rebuild the model of a train.py checkpoint (file, checkpoints dir or run dir) on ``device``
    (default: cuda if available), with the EMA weights unless ``use_ema`` is False, on op
    ``backend`` ("torch", "triton" or None for automatic)."""
    path, ck = load_newest_checkpoint(ckpt)
    for key in ("model_name", "model_kwargs", "ema", "model", "diffusion", "data", "args"):
        if key not in ck:
            raise CheckpointError(f"{path} is not a train.py checkpoint (no {key!r})")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = create_model(ck["model_name"], **ck["model_kwargs"])
    model.load_state_dict(ck["ema" if use_ema else "model"])
    model.set_backend(backend)
    model.to(dev).eval().requires_grad_(False)
    args = ck["args"]
    codec = load_vae(args["vae"], dev, args.get("vae_subfolder")) if args.get("vae") else None
    return SamplingRun(model, Diffusion.from_config(ck["diffusion"]), codec, ck["data"], args, int(ck["step"]), Path(path), dev)
