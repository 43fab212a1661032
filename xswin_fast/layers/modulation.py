"""``Modulator``: the adaLN shift/scale that XSwin puts in front of every parameterised layer."""
import torch
import torch.nn as nn

from .. import ops


class Modulator(nn.Module):
    """x * (1 + scale(c)) + shift(c), with (shift, scale) = Linear(SiLU(c)) zero-initialised (identity).

    The model computes ``cond = SiLU(c)`` once per forward and hands it to every modulator, so
    each one is a single Linear (cond_dim -> 2*dim). ``channels_last=False`` modulates a
    (B, C, H, W) conv feature map; otherwise x is (B, ..., C).
    """

    backend = None

    def __init__(self, cond_dim: int, dim: int, channels_last: bool = True):
        super().__init__()
        self.dim = dim
        self.channels_last = channels_last
        self.linear = nn.Linear(cond_dim, 2 * dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        shift, scale = self.linear(cond).chunk(2, dim=1)
        if self.channels_last:
            return ops.modulate(x, shift, scale, backend=self.backend)
        y = ops.modulate(x.permute(0, 2, 3, 1), shift, scale, backend=self.backend)
        return y.permute(0, 3, 1, 2)
