"""DiffiT's time-dependent multi-head self-attention (TMSA) and the DiffiT transformer block.

TMSA (DiffiT, Eqs. 3-6) makes q, k and v linear in the spatial token x_s *and* the time token
x_t: ``q_s = x_s W_qs + x_t W_qt`` (likewise k, v), then ``Softmax(Q K^T / sqrt(d) + B) V``
inside non-shifted windows, with B a learned (Swin-style) relative position bias table.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn

from .. import ops
from ..ops.reference import cached_constant
from . import checks
from .attention import effective_window
from .blocks import text_branch
from .mlp import Mlp, mlp_hidden_dim
from .text import TextCrossAttention


def _relative_position_index(window: Tuple[int, int], table_window: Tuple[int, int], device: torch.device):
    """(N*N,) index into a ((2Wh-1)*(2Ww-1), heads) table of ``table_window`` for the token pairs of
    an (effective, possibly smaller) ``window``: a relative offset keeps its row whatever the map size.
    Cached (``ops.reference.cached_constant``)."""

    def build():
        (wh, ww), (th, tw) = window, table_window
        coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)
        rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N)
        return ((rel[0] + th - 1) * (2 * tw - 1) + (rel[1] + tw - 1)).reshape(-1).to(device)

    return cached_constant(("tmsa_rpb_index", window, table_window, device), build)


class TMSA(nn.Module):
    """Window TMSA: tokens (B, H, W, dim), time token (B, time_dim) -> (B, H, W, dim).

    ``qkv`` holds W_qs, W_ks, W_vs (with the biases), ``qkv_time`` W_qt, W_kt, W_vt. The time
    terms ``x_t W_t`` are one (B, 3 dim) vector per sample: they are added to the projected qkv
    as a (B, 1, 1, 3 dim) broadcast, never copied per token. Attention runs through
    ``ops.window_attention`` (scaled dot product, the relative position bias, no shift); a
    window larger than the map is clamped to it, so a window equal to the token grid is global
    attention (the latent model).
    """

    backend = None

    def __init__(self, dim: int, time_dim: int, num_heads: int, window_size):
        super().__init__()
        dim, time_dim = checks.integer("dim", dim), checks.integer("time_dim", time_dim)
        checks.integer("num_heads", num_heads)
        checks.divisible("dim", dim, "num_heads", num_heads)
        self.num_heads = num_heads
        self.window_size = checks.int_pair("window_size", window_size)
        wh, ww = self.window_size
        self.qkv = nn.Linear(dim, 3 * dim)
        # no bias: it would only add to qkv's
        self.qkv_time = nn.Linear(time_dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def position_bias(self, window: Tuple[int, int]) -> torch.Tensor:
        """(heads, N, N) relative position bias B of an (effective) window, N = wh * ww."""
        table = self.relative_position_bias_table
        index = _relative_position_index(tuple(window), self.window_size, table.device)
        N = window[0] * window[1]
        return table[index].view(N, N, self.num_heads).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, time_token: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        window, _ = effective_window(H, W, self.window_size, (0, 0))
        qkv = self.qkv(x)  # (B, H, W, 3C): x_s [W_qs | W_ks | W_vs] + biases
        # + x_t [W_qt | W_kt | W_vt], in place: the linear's backward does not need its output
        qkv.add_(self.qkv_time(time_token).to(qkv.dtype)[:, None, None, :])
        qkv = qkv.view(B, H, W, 3, self.num_heads, C // self.num_heads)
        o = ops.window_attention(
            qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :], window,
            bias=self.position_bias(window).to(qkv.dtype), backend=self.backend,
        )
        return self.proj(o)


class DiffiTBlock(nn.Module):
    """DiffiT transformer block (Eqs. 7-8): ``x + TMSA(LN(x), x_t)``, then ``x + MLP(LN(x))``.

    x (B, H, W, dim), time_token (B, time_dim) -> (B, H, W, dim). The LayerNorms carry no
    affine parameters (as the released latent model's; the next linear absorbs them). With
    ``text_width`` > 0, ``x + cross_attn(x, context)`` (the separate MHCA sub-block) follows the
    TMSA: context (B, L_text, text_width), keep (B, L_text) bool or None.
    """

    def __init__(self, dim: int, time_dim: int, num_heads: int, window_size, mlp_ratio: float = 4.0,
                 text_width: int = 0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = TMSA(dim, time_dim, num_heads, window_size)
        if checks.integer("text_width", text_width, minimum=0):
            self.cross_attn = TextCrossAttention(dim, num_heads, text_width)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, mlp_hidden_dim(dim, mlp_ratio), approximate="tanh")

    def forward(self, x: torch.Tensor, time_token: torch.Tensor, context: Optional[torch.Tensor] = None,
                keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), time_token)
        x = text_branch(self, x, context, keep)
        return x + self.mlp(self.norm2(x))
