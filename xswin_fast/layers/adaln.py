"""adaLN layers: ``Modulator``, the shift/scale that XSwin puts in front of every parameterised
layer, and the LayerNorms fused with the op around them (``ModulatedLayerNorm``, ``ResidualLayerNorm``).

The conditioning contract of every layer and block is a plain tensor: ``silu_c`` (B, c_dim), the
SiLU of the model's conditioning embedding ``c``, and each layer projects its own adaLN vectors
from it (as k-diffusion's HDiT and the official DiT do). A layer reads its parameters only in its
own forward (so that diffusers' layerwise-casting and offloading hooks, which act per module, see
every use).
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn

from .. import ops
from . import checks


class Modulator(nn.Module):
    """x * (1 + scale(c)) + shift(c), with (shift, scale) = Linear(SiLU(c)) zero-initialised (identity).

    The model computes ``silu_c = SiLU(c)`` once per forward and hands it to every modulator, so
    each one is a single Linear (c_dim -> 2*dim). ``channels_last=False`` modulates a
    (B, C, H, W) conv feature map; otherwise x is (B, ..., C).
    """

    backend = None

    def __init__(self, c_dim: int, dim: int, channels_last: bool = True):
        super().__init__()
        c_dim, dim = checks.integer("c_dim", c_dim), checks.integer("dim", dim)
        self.channels_last = checks.flag("channels_last", channels_last)
        self.linear = nn.Linear(c_dim, 2 * dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def shift_scale(self, silu_c: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(shift, scale), each (B, dim), from silu_c (B, c_dim)."""
        shift, scale = self.linear(silu_c).chunk(2, dim=1)
        return shift, scale

    def forward(self, x: torch.Tensor, silu_c: torch.Tensor) -> torch.Tensor:
        """x (B, ..., dim), or (B, dim, H, W) with ``channels_last=False``; silu_c (B, c_dim)."""
        shift, scale = self.shift_scale(silu_c)
        if self.channels_last:
            return ops.modulate(x, shift, scale, backend=self.backend)
        y = ops.modulate(x.permute(0, 2, 3, 1), shift, scale, backend=self.backend)
        return y.permute(0, 3, 1, 2)


class ModulatedLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over C after a modulation: LN(x * (1 + scale) + shift) with the norm's
    affine, fused in ``ops.modulate_layernorm``. x (B, ..., C); shift, scale (B, C)."""

    backend = None

    def forward(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return ops.modulate_layernorm(x, shift, scale, self.weight, self.bias, self.eps, backend=self.backend)


class ResidualLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` of a residual branch: x + keep * LN(y) with the norm's affine, fused in
    ``ops.residual_layernorm``. x, y (B, ..., C); keep (B,) or None (stochastic depth)."""

    backend = None

    def forward(self, x: torch.Tensor, y: torch.Tensor, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        return ops.residual_layernorm(x, y, self.weight, self.bias, keep, self.eps, backend=self.backend)
