"""The transformer MLP, with timm's parameter names (fc1, fc2) so that DiT checkpoints load unchanged."""
import torch
import torch.nn as nn

from . import checks


class Mlp(nn.Module):
    """Linear -> GELU -> Linear: (B, ..., dim) -> (B, ..., dim).

    ``approximate="tanh"`` is DiT's choice, "none" Swin's and ViT's.
    """

    def __init__(self, dim: int, hidden_dim: int, approximate: str = "none"):
        super().__init__()
        dim, hidden_dim = checks.integer("dim", dim), checks.integer("hidden_dim", hidden_dim)
        if approximate not in ("none", "tanh"):
            raise ValueError(f'approximate must be "none" or "tanh", got {approximate!r}')
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU(approximate=approximate)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def mlp_hidden_dim(dim: int, mlp_ratio: float) -> int:
    """The MLP width ``int(dim * mlp_ratio)`` of a block, for a finite ``mlp_ratio`` > 0 that leaves
    at least one hidden unit."""
    hidden = int(dim * checks.positive_float("mlp_ratio", mlp_ratio))
    if hidden < 1:
        raise ValueError(f"mlp_ratio ({mlp_ratio}) times the width ({dim}) must be >= 1")
    return hidden
