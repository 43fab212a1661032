"""Global multi-head self-attention and the MLP, with timm's parameter names (qkv, proj, fc1, fc2)
so that DiT checkpoints load unchanged."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    """Full self-attention over a token sequence: (B, L, C) -> (B, L, C).

    Runs through ``scaled_dot_product_attention`` (flash / memory-efficient backends on GPU).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, heads, L, d)
        return self.proj(o.transpose(1, 2).reshape(B, L, C))


class Mlp(nn.Module):
    """Linear -> GELU -> Linear. ``approximate="tanh"`` is DiT's choice, "none" Swin's and ViT's."""

    def __init__(self, dim: int, hidden_dim: int, approximate: str = "none"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU(approximate=approximate)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
