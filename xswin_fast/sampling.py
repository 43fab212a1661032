"""Generate images from a trained backbone: batches of class labels -> uint8 pixels.

Used by the trainer's sample grids, ``sample.py`` and ``evaluate.py``.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .diffusion import Diffusion
from .images import to_uint8
from .vae import LatentCodec


@torch.no_grad()
def generate(
    model: nn.Module,
    diffusion: Diffusion,
    labels: Sequence[int],
    shape: Tuple[int, int, int],
    *,
    codec: Optional[LatentCodec] = None,
    sampler: str = "ddpm",
    steps: int = 250,
    cfg_scale: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
    autocast_dtype: Optional[torch.dtype] = None,
    progress: bool = False,
) -> torch.Tensor:
    """uint8 images (N, C, H, W) on the CPU, one per entry of ``labels`` (N ints).

    ``model`` (eval mode) samples ``shape`` = (C, H, W) of its input space on its own device;
    ``codec`` decodes latents to pixels (None: pixel space). One generator seeded with ``seed``
    draws all noise, so a given seed and ``batch_size`` always give the same images.
    """
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    chunks = range(0, len(labels), batch_size)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="sampling batches")
    for i in chunks:
        y = torch.tensor(list(labels[i : i + batch_size]), device=device, dtype=torch.long)
        x = diffusion.sample(
            model, y, shape, sampler=sampler, steps=steps, cfg_scale=cfg_scale, generator=gen,
            autocast_dtype=autocast_dtype,
        )
        if codec is not None:
            x = codec.decode(x)
        out.append(to_uint8(x))
    return torch.cat(out)
