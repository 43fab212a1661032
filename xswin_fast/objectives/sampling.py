"""Generate images from a trained backbone: batches of class labels or prompts -> uint8 pixels.

Used by the trainer's sample grids, ``sample.py`` and ``evaluate.py``, which share one
classifier-free guidance default, :data:`DEFAULT_CFG_SCALE`.
"""
import logging
import math
import time
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..images import to_uint8
from ..vae import LatentCodec
from .base import Objective
from .flow import ADAPTIVE_SAMPLERS, SDE_DEFAULT_STEPS
from .guidance import Interval, TextCondition

# the guidance scale of train.py's grids, sample.py and evaluate.py: DiT's FID setting, and the
# best FID of the digits job (docs/training.md)
DEFAULT_CFG_SCALE = 1.5
PROGRESS = ("none", "bar", "log")

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


@torch.no_grad()
def generate(
    model: nn.Module,
    objective: Objective,
    labels: Union[Sequence[int], TextCondition],
    shape: Tuple[int, int, int],
    *,
    codec: Optional[LatentCodec] = None,
    sampler: Optional[str] = None,
    steps: Optional[int] = None,
    cfg_scale: float = DEFAULT_CFG_SCALE,
    cfg_interval: Interval = None,
    seed: int = 0,
    batch_size: int = 64,
    autocast_dtype: Optional[torch.dtype] = None,
    progress: str = "none",
    guided_channels: Optional[int] = None,
    ode_options: Optional[Dict[str, float]] = None,
) -> torch.Tensor:
    """uint8 images (N, C, H, W) on the CPU, one per entry of ``labels``: N ints, or for a text
    model a :class:`TextCondition` of N prompts (with their negative prompts or the null caption
    as guidance's unconditional half).

    ``model`` (eval mode) samples ``shape`` = (C, H, W) of its input space on its own device;
    ``objective`` is the run's (``Diffusion`` or ``FlowMatching``); ``sampler`` and
    ``steps`` default to its own (ddpm 250 for eps, euler 25 for flow; 250 for flow's "sde", and
    none for the adaptive "dopri5", which takes no ``steps``); ``cfg_interval`` (lo, hi] limits
    guidance to those noise levels (see ``xswin_fast.objectives.guidance``); ``guided_channels``
    the channels guided (None: all; SiT and DiT as released guide 3 of 4 latent channels).
    ``ode_options`` ({"atol": float, "rtol": float}) go to the adaptive "dopri5" only.
    ``codec`` decodes latents to pixels (None: pixel space). One generator seeded with ``seed``
    draws all noise, so a given seed and ``batch_size`` always give the same images.
    ``progress`` over all denoising steps: "none", "bar" (tqdm) or "log" (k/N, elapsed and ETA
    lines through this module's logger, for a log file or a pipe).
    """
    if progress not in PROGRESS:
        raise ValueError(f"progress must be one of {PROGRESS}, got {progress!r}")
    sampler = sampler or objective.default_sampler
    if sampler in ADAPTIVE_SAMPLERS:
        if steps is not None:
            raise ValueError(f"steps does not apply to the adaptive {sampler} sampler, got {steps}")
    else:
        steps = steps or (SDE_DEFAULT_STEPS if sampler == "sde" else objective.default_steps)
        if ode_options is not None:
            raise ValueError(f"ode_options apply to the adaptive {ADAPTIVE_SAMPLERS} only, not to sampler {sampler!r}")
    adaptive = {"ode_options": ode_options} if ode_options is not None else {}
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    total = math.ceil(len(labels) / batch_size) * steps if steps else None
    desc = f"sampling {len(labels)} images ({sampler}{f', {steps} steps' if steps else ''})"
    if progress == "bar":
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=desc, unit="step")
        on_step = bar.update
    elif progress == "log" and total:
        on_step = ProgressLines(total, desc, "denoising steps").advance
    else:
        on_step = None
    out = []
    for i in range(0, len(labels), batch_size):
        if isinstance(labels, TextCondition):
            y = labels[i : i + batch_size]
            y = TextCondition(y.prompts.to(device), None if y.negative is None else y.negative.to(device))
        else:
            y = torch.tensor(list(labels[i : i + batch_size]), device=device, dtype=torch.long)
        x = objective.sample(
            model, y, shape, sampler=sampler, steps=steps, cfg_scale=cfg_scale, cfg_interval=cfg_interval, generator=gen,
            autocast_dtype=autocast_dtype, on_step=on_step, guided_channels=guided_channels, **adaptive,
        )
        if codec is not None:
            x = codec.decode(x)
        out.append(to_uint8(x))
    if progress == "bar":
        bar.close()
    return torch.cat(out)
