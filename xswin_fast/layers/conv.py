"""Modulated convolution layers of XSwin's outer blocks, on (B, C, H, W) feature maps."""
import torch
import torch.nn as nn

from . import checks
from .adaln import Modulator


class ConvTriplet(nn.Module):
    """Three times [modulate -> Conv3x3 -> BatchNorm -> LeakyReLU(0.01)]: (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, c_dim: int, kernel_size: int = 3):
        super().__init__()
        in_channels, out_channels = checks.integer("in_channels", in_channels), checks.integer("out_channels", out_channels)
        if checks.integer("kernel_size", kernel_size) % 2 == 0:
            raise ValueError(f"kernel_size must be odd (a 'same' convolution), got {kernel_size}")
        chans = [in_channels, out_channels, out_channels]
        self.mods = nn.ModuleList([Modulator(c_dim, c, channels_last=False) for c in chans])
        self.convs = nn.ModuleList(
            [nn.Conv2d(c, out_channels, kernel_size, padding=(kernel_size - 1) // 2) for c in chans]
        )
        self.norms = nn.ModuleList([nn.BatchNorm2d(out_channels) for _ in chans])
        self.act = nn.LeakyReLU(0.01)

    def forward(self, x: torch.Tensor, silu_c: torch.Tensor) -> torch.Tensor:
        for mod, conv, norm in zip(self.mods, self.convs, self.norms):
            x = self.act(norm(conv(mod(x, silu_c))))
        return x


class OutputHead(nn.Module):
    """Modulate -> Conv1x1: (B, C, H, W) -> (B, C_out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, c_dim: int):
        super().__init__()
        self.mod = Modulator(c_dim, in_channels, channels_last=False)
        self.conv = nn.Conv2d(in_channels, checks.integer("out_channels", out_channels), kernel_size=1)

    def forward(self, x: torch.Tensor, silu_c: torch.Tensor) -> torch.Tensor:
        return self.conv(self.mod(x, silu_c))
