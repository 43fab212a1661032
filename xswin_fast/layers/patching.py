"""Resolution changes of XSwin: patching in/out of the token grid, patch merging and expanding.

Token maps are channels-last (B, H, W, C); conv feature maps are (B, C, H, W).
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import checks
from .adaln import Modulator


class Patching(nn.Module):
    """(B, C_in, H, W) features -> (B, H/p, W/p, C) tokens: modulate -> Conv(k=p, s=p) -> LayerNorm."""

    def __init__(self, in_dim: int, dim: int, patch_size: int, c_dim: int, eps: float = 1e-5):
        super().__init__()
        patch_size = checks.integer("patch_size", patch_size)
        self.mod = Modulator(c_dim, in_dim, channels_last=False)
        self.proj = nn.Conv2d(in_dim, checks.integer("dim", dim), kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim, eps=checks.positive_float("eps", eps))

    def forward(self, x: torch.Tensor, silu_c: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(self.mod(x, silu_c)).permute(0, 2, 3, 1))


class UnPatching(nn.Module):
    """(B, H, W, C) tokens -> (B, C, H*p, W*p): modulate -> ConvTranspose(k=p, s=p) -> BatchNorm."""

    def __init__(self, dim: int, patch_size: int, c_dim: int):
        super().__init__()
        patch_size = checks.integer("patch_size", patch_size)
        self.mod = Modulator(c_dim, dim)
        self.proj = nn.ConvTranspose2d(dim, dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor, silu_c: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(self.mod(x, silu_c).permute(0, 3, 1, 2)))


class PatchMerging(nn.Module):
    """SwinV2 patch merging (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C).

    Modulate, pad odd sizes bottom/right, gather each 2x2 neighbourhood in torchvision's order
    [(0,0), (1,0), (0,1), (1,1)], Linear 4C -> 2C (no bias), LayerNorm (post-norm, V2).
    """

    def __init__(self, dim: int, c_dim: int, eps: float = 1e-5):
        super().__init__()
        self.mod = Modulator(c_dim, dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(2 * dim, eps=checks.positive_float("eps", eps))

    def forward(self, x: torch.Tensor, silu_c: torch.Tensor) -> torch.Tensor:
        x = self.mod(x, silu_c)
        H, W = x.shape[1:3]
        x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.norm(self.reduction(x))


class PatchExpanding(nn.Module):
    """Patch expanding (B, H, W, C) -> (B, 2H, 2W, C/2), trimmed to ``target`` (H', W').

    Modulate, Linear C -> 2C (no bias), LayerNorm, then depth-to-space: channel group 2a + b
    goes to sub-position (row a, column b). Trimming undoes the bottom/right padding of the
    matching PatchMerging.
    """

    def __init__(self, dim: int, c_dim: int, eps: float = 1e-5):
        super().__init__()
        if checks.integer("dim", dim) % 2:
            raise ValueError(f"dim of PatchExpanding must be even, got {dim}")
        self.mod = Modulator(c_dim, dim)
        self.expansion = nn.Linear(dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(2 * dim, eps=checks.positive_float("eps", eps))

    def forward(self, x: torch.Tensor, silu_c: torch.Tensor, target: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        B, H, W, C = x.shape
        x = self.norm(self.expansion(self.mod(x, silu_c)))
        x = x.view(B, H, W, 2, 2, C // 2).permute(0, 1, 3, 2, 4, 5).reshape(B, 2 * H, 2 * W, C // 2)
        if target is not None:
            x = x[:, : target[0], : target[1]]
        return x
