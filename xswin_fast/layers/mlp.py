"""The transformer MLP, with timm's parameter names (fc1, fc2) so that DiT checkpoints load unchanged."""
import torch
import torch.nn as nn


class Mlp(nn.Module):
    """Linear -> GELU -> Linear: (B, ..., dim) -> (B, ..., dim).

    ``approximate="tanh"`` is DiT's choice, "none" Swin's and ViT's.
    """

    def __init__(self, dim: int, hidden_dim: int, approximate: str = "none"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU(approximate=approximate)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
