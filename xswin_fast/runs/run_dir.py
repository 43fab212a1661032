"""Run directories: opening (auto-numbered, locked) ones, and loading a run's model back for sampling.

A run directory holds ``config.json``, ``log.txt``, ``losses.csv``, ``split.json``,
``checkpoints/NNNNNNN.pt``, ``samples/`` and, at the end, ``samples.png`` and ``loss.png``, plus
``.lock``: the training process that writes it holds an exclusive ``flock`` on that file.
"""
import fcntl
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import torch

from ..checkpoints import check_train_checkpoint, list_checkpoints, load_newest_checkpoint, load_weights
from ..models import create_model
from ..objectives import Objective, objective_from_config, saved_objective_config
from ..pipelines.export import is_model_folder, read_model_folder
from ..text import TextEncoder
from ..vae import LatentCodec, load_vae
from .config import ConfigError, TrainConfig
from .distributed import DistInfo, barrier, broadcast_object, resolve_device


def run_dir_of(checkpoint: Path) -> Path:
    """The run directory of a checkpoint file (``RUN/checkpoints/N.pt`` or ``RUN/N.pt``)."""
    p = Path(checkpoint).parent
    return p.parent if p.name == "checkpoints" else p


LOCK_FILE = ".lock"


def _ensure_directory(path: Path, flag: str) -> None:
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file, not a directory")
    path.mkdir(parents=True, exist_ok=True)


def new_numbered_run_dir(results_dir: Path, model: str) -> Path:
    """Create ``RESULTS_DIR/NNN-MODEL`` (DiT's scheme), NNN one past the numbered directories there.
    ``mkdir`` is atomic: two runs started at once get two different numbers."""
    _ensure_directory(results_dir, "--results-dir")
    index = len([d for d in results_dir.iterdir() if d.is_dir() and d.name[:3].isdigit()])
    name = model.replace("/", "-")
    while True:
        path = results_dir / f"{index:03d}-{name}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            index += 1


@contextmanager
def run_dir_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/.lock`` exclusively (one writer per run directory); ConfigError if another
    process holds it. The kernel releases a ``flock`` when its process dies, so the lock file of a
    dead process is simply taken over."""
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            raise ConfigError(
                f"{run_dir} is in use by another training process (pid {owner}): one process writes a run "
                "directory at a time; wait for it to finish, or pick another --run-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


@contextmanager
def open_run_dir(config: TrainConfig, dist: DistInfo) -> Iterator[Path]:
    """The run directory, locked by rank 0 while the context lasts: ``--run-dir``, the resumed
    checkpoint's, or a new numbered one (created on rank 0 and broadcast). A new run refuses a
    directory that already holds checkpoints."""
    if config.run_dir:
        run_dir = Path(config.run_dir)
    elif config.resume:
        run_dir = run_dir_of(Path(config.resume))
    else:
        chosen = str(new_numbered_run_dir(Path(config.results_dir), config.model)) if dist.is_main else None
        run_dir = Path(broadcast_object(chosen))
    if not dist.is_main:
        barrier()
        yield run_dir
        return
    _ensure_directory(run_dir, "--run-dir")
    with run_dir_lock(run_dir):
        if config.resume is None and list_checkpoints(run_dir / "checkpoints"):
            raise ConfigError(f"{run_dir} already holds checkpoints: pass --resume {run_dir} to continue it, or pick another --run-dir")
        (run_dir / "checkpoints").mkdir(exist_ok=True)
        (run_dir / "samples").mkdir(exist_ok=True)
        barrier()
        yield run_dir


@dataclass
class SamplingRun:
    """A trained model ready to sample: backbone (eval mode), objective (the eps ``Diffusion`` or
    ``FlowMatching``, from the checkpoint's saved config), optional VAE.

    ``data``: the checkpoint's data description (classes, sizes, channels); ``args``: its run config;
    ``text_encoder``: the frozen encoder of a text-to-image run (None for a class run).
    """

    model: torch.nn.Module
    objective: Objective
    codec: Optional[LatentCodec]
    data: Dict[str, Any]
    args: Dict[str, Any]
    step: int
    checkpoint: Path
    device: torch.device
    text_encoder: Optional[TextEncoder] = None

    @property
    def run_dir(self) -> Path:
        return run_dir_of(self.checkpoint)

    @property
    def latent_shape(self) -> Tuple[int, int, int]:
        """(C, H, W) of the space the model samples in (pixels, or VAE latents)."""
        d = self.data
        return (d["latent_channels"], d["latent_size"], d["latent_size"])


def load_run(ckpt: str, device: Optional[str] = None, use_ema: bool = True, backend: Optional[str] = None) -> SamplingRun:
    """Rebuild the model of a train.py checkpoint (file, checkpoints dir or run dir) or of a model
    folder written by ``export_run`` on ``device``
    (see ``resolve_device``; default: cuda if available), with the EMA weights unless ``use_ema`` is False, on op
    ``backend`` ("torch", "triton" or None for automatic)."""
    dev = resolve_device(device)
    if is_model_folder(ckpt, partly=True):  # by export_run (use_ema has no effect); a damaged one is named
        f = read_model_folder(ckpt, dev, backend)
        return SamplingRun(f.model, objective_from_config(f.objective), f.codec, f.data, f.args, f.step,
                           Path(ckpt) / "model_index.json", f.device, f.text_encoder)
    path, ck = load_newest_checkpoint(ckpt)
    check_train_checkpoint(ck, path, ("model_name", "model_kwargs", "ema", "model", "data", "args", "step"))
    model = create_model(ck["model_name"], **ck["model_kwargs"])
    load_weights(model, ck["ema" if use_ema else "model"], path, "ema" if use_ema else "model")
    model.set_backend(backend)
    model.to(dev).eval().requires_grad_(False)
    args = ck["args"]
    try:
        codec = load_vae(args["vae"], dev, args.get("vae_subfolder")) if args.get("vae") else None
    except RuntimeError as exc:  # load_vae's message says where a VAE can come from
        raise ConfigError(f"the run's VAE cannot be loaded: {exc}") from exc
    return SamplingRun(model, objective_from_config(saved_objective_config(ck)), codec, ck["data"], args, int(ck["step"]),
                       Path(path), dev, run_text_encoder(args, dev))


def run_text_encoder(args: Dict[str, Any], device: torch.device) -> Optional[TextEncoder]:
    """The text encoder a run's settings ``args`` name (name or folder, dtype, token limit), on
    ``device``; None for a class run. ConfigError when it cannot be loaded."""
    if not args.get("text_encoder"):
        return None
    try:
        return TextEncoder.from_pretrained(args["text_encoder"], args["text_encoder_dtype"], device, args["text_max_length"])
    except (OSError, ValueError) as exc:
        raise ConfigError(f"the run's text encoder {args['text_encoder']} cannot be loaded: {exc}") from exc
