"""``Modulator``: the adaLN shift/scale that XSwin puts in front of every parameterised layer.

The conditioning contract of every layer and block is a plain tensor: ``cond`` (B, cond_dim),
the model's conditioning embedding, and each layer projects its own adaLN vectors from it (as
k-diffusion's HDiT and the official DiT do).

Batching every adaLN projection of a model into one GEMM per forward (a ``ModulationBank`` of
precomputed vectors passed down in place of ``cond``, slots stamped on the layers) was measured
on the CPU path and removed. ``python benchmarks/adaln_batching.py 15`` at commit 99b4720 (the
script went with the batching): one thread, a 2-core AMD EPYC shared with other jobs, batched
and per-layer variants interleaved in one process, 15 repeats. Median over repeats of
time(per layer) / time(batched), forward | forward+backward:

    XSwin-digits (8x8, 1 channel)  batch 1: 1.09 | 1.07   batch 16: 1.05 | 1.02   batch 64: 1.01 | 1.02
    XSwin-S/2 (32x32 latents)      batch 1: 0.99 | 1.00   batch 8:  1.01 | 0.99
    DiT-S/2 (32x32 latents)        batch 1: 0.97 | 1.00   batch 8:  0.99 | 0.98

Repeat-to-repeat spread 0.8-1.4 (0.5-1.8 at worst). Batching saved a few percent only where
launches dominate (the toy model at batch 1-16) and nothing at the digits training batch (64)
or at real model sizes, while it cost a per-forward copy of every projection weight and a
conditioning object that every layer had to recognise.
"""
from typing import Tuple

import torch
import torch.nn as nn

from .. import ops
from . import checks


class Modulator(nn.Module):
    """x * (1 + scale(c)) + shift(c), with (shift, scale) = Linear(SiLU(c)) zero-initialised (identity).

    The model computes ``cond = SiLU(c)`` once per forward and hands it to every modulator, so
    each one is a single Linear (cond_dim -> 2*dim). ``channels_last=False`` modulates a
    (B, C, H, W) conv feature map; otherwise x is (B, ..., C).
    """

    backend = None

    def __init__(self, cond_dim: int, dim: int, channels_last: bool = True):
        super().__init__()
        cond_dim, dim = checks.integer("cond_dim", cond_dim), checks.integer("dim", dim)
        self.channels_last = checks.flag("channels_last", channels_last)
        self.linear = nn.Linear(cond_dim, 2 * dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def shift_scale(self, cond: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(shift, scale), each (B, dim), from cond (B, cond_dim)."""
        shift, scale = self.linear(cond).chunk(2, dim=1)
        return shift, scale

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x (B, ..., dim), or (B, dim, H, W) with ``channels_last=False``; cond (B, cond_dim)."""
        shift, scale = self.shift_scale(cond)
        if self.channels_last:
            return ops.modulate(x, shift, scale, backend=self.backend)
        y = ops.modulate(x.permute(0, 2, 3, 1), shift, scale, backend=self.backend)
        return y.permute(0, 3, 1, 2)
