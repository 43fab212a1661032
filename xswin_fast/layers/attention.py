"""Attention layers: XSwin's SwinV2 shifted-window self-attention with a continuous position bias
and the localized window cross-attention of its U-Net skips (both call
``xswin_fast.ops.window_attention`` on strided views of one projection output), and the global
multi-head self-attention of the ViT bottleneck and of DiT, with timm's parameter names (qkv,
proj) so that DiT checkpoints load unchanged.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..ops.reference import cached_constant
from . import checks
from .adaln import Modulator


def effective_window(H: int, W: int, window_size, shift_size) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """Clamp the window to the map and drop the shift along an axis the window covers (as Swin)."""
    (wh, ww), (sh, sw) = window_size, shift_size
    wh, ww = min(wh, H), min(ww, W)
    if wh >= H:
        sh = 0
    if ww >= W:
        sw = 0
    return (wh, ww), (sh, sw)


def _cpb_inputs(window: Tuple[int, int], reference_window: Tuple[int, int], device: torch.device, dtype: torch.dtype):
    """SwinV2 log-spaced relative coordinates ((2wh-1)*(2ww-1), 2) in ``dtype`` and the (N*N,)
    table index, on ``device``; cached (``ops.reference.cached_constant``).

    Coordinates are normalised by the configured window, not the clamped one, so a relative
    offset gets the same bias whatever the map size.
    """

    def build():
        table, index = _build_cpb_inputs(window, reference_window)
        return table.to(device=device, dtype=dtype), index.to(device)

    return cached_constant(("cpb_inputs", window, reference_window, device, dtype), build)


def _build_cpb_inputs(window: Tuple[int, int], reference_window: Tuple[int, int]):
    """The CPU tensors of ``_cpb_inputs``, in float32."""
    wh, ww = window
    rh = torch.arange(-(wh - 1), wh, dtype=torch.float32, device="cpu") / max(reference_window[0] - 1, 1)
    rw = torch.arange(-(ww - 1), ww, dtype=torch.float32, device="cpu") / max(reference_window[1] - 1, 1)
    table = torch.stack(torch.meshgrid(rh, rw, indexing="ij"), dim=-1).reshape(-1, 2) * 8
    table = torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)
    coords = torch.stack(torch.meshgrid(torch.arange(wh, device="cpu"), torch.arange(ww, device="cpu"), indexing="ij"))
    coords = coords.flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N)
    index = (rel[0] + wh - 1) * (2 * ww - 1) + (rel[1] + ww - 1)
    return table, index.reshape(-1)


class QKVLinear(nn.Linear):
    """SwinV2's fused q, k, v projection: (B, ..., C) -> (B, ..., 3C), ``x W^T + [b_q, 0, b_v]``.

    SwinV2 has no key bias; the middle third of ``bias`` is kept (torchvision's layout, so that
    checkpoints load) but never used, as torchvision zeroes it.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        C = self.out_features // 3
        bias = torch.cat([self.bias[:C], torch.zeros_like(self.bias[:C]), self.bias[2 * C:]])
        return F.linear(x, self.weight, bias)


class WindowAttention(nn.Module):
    """SwinV2 shifted-window self-attention: (B, H, W, C) -> (B, H, W, C).

    Cosine attention with a learned per-head logit scale (clamped at log 100) and the continuous
    position bias ``16 * sigmoid(cpb_mlp(log-spaced coords))``; q and v have biases, k does not.
    """

    backend = None

    def __init__(self, dim: int, num_heads: int, window_size: Tuple[int, int], shift_size: Tuple[int, int]):
        super().__init__()
        _check_heads(dim, num_heads)
        self.num_heads = num_heads
        self.window_size = checks.int_pair("window_size", window_size)
        self.shift_size = checks.int_pair("shift_size", shift_size, minimum=0)
        if any(s >= w for s, w in zip(self.shift_size, self.window_size)):
            raise ValueError(f"shift_size must be < window_size on each axis, got {self.shift_size} for {self.window_size}")
        self.qkv = QKVLinear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.logit_scale = nn.Parameter(torch.full((num_heads,), math.log(10.0)))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, 512), nn.ReLU(inplace=True), nn.Linear(512, num_heads, bias=False))

    def position_bias(self, window: Tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        """(heads, N, N) continuous relative-position bias for an (effective) window, computed on
        the device and in the dtype of the activations ``like``."""
        table, index = _cpb_inputs(tuple(window), self.window_size, like.device, like.dtype)
        bias = self.cpb_mlp(table)  # (T, heads)
        N = window[0] * window[1]
        bias = bias[index].view(N, N, self.num_heads).permute(2, 0, 1)
        return 16 * torch.sigmoid(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        window, shift = effective_window(H, W, self.window_size, self.shift_size)
        qkv = self.qkv(x).view(B, H, W, 3, self.num_heads, C // self.num_heads)
        o = ops.window_attention(
            qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :], window, shift,
            bias=self.position_bias(window, x), logit_scale=self.logit_scale, backend=self.backend,
        )
        return self.proj(o)


class WindowCrossAttention(nn.Module):
    """Localized window cross-attention of an XSwin skip: (B, H, W, C) x2 -> (B, H, W, C).

    Decoder features query the encoder skip inside the stage's (non-shifted) Swin windows;
    scaled dot-product attention, output projection, then LayerNorm. Both inputs are modulated
    first. The windows are aligned with the Swin grid and padded keys are masked (the original
    code padded a whole extra window and attended to zeros; docs/design.md §4).
    """

    backend = None

    def __init__(self, dim: int, num_heads: int, window_size: Tuple[int, int], c_dim: int, eps: float = 1e-5):
        super().__init__()
        _check_heads(dim, num_heads)
        self.num_heads = num_heads
        self.window_size = checks.int_pair("window_size", window_size)
        eps = checks.positive_float("eps", eps)
        # the original code's names, kept so that its weights map one to one: mod_x modulates the
        # decoder features x (the queries), mod_r the encoder skip r ("residual", keys and values)
        self.mod_x = Modulator(c_dim, dim)
        self.mod_r = Modulator(c_dim, dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, silu_c: torch.Tensor) -> torch.Tensor:
        B, H, W, C = x.shape
        if skip.shape != x.shape:
            raise ValueError(f"skip must match the decoder map {tuple(x.shape)}, got {tuple(skip.shape)}")
        window, _ = effective_window(H, W, self.window_size, (0, 0))
        d = C // self.num_heads
        q = self.q(self.mod_x(x, silu_c)).view(B, H, W, self.num_heads, d)
        kv = self.kv(self.mod_r(skip, silu_c)).view(B, H, W, 2, self.num_heads, d)
        o = ops.window_attention(q, kv[..., 0, :, :], kv[..., 1, :, :], window, backend=self.backend)
        return self.norm(self.proj(o))


class Attention(nn.Module):
    """Global multi-head self-attention over a token sequence: (B, L, C) -> (B, L, C).

    With ``context_dim`` > 0 it is GLIDE's fused "self"-attention for text: ``text_kv`` projects
    the text context (B, L_text, context_dim) to keys and values that are concatenated after the
    image tokens' own, and masked text tokens are excluded (``masked_attention``); a caption that
    keeps no token leaves exactly the self-attention over the image tokens.

    Runs through ``scaled_dot_product_attention`` (flash / memory-efficient backends on GPU).
    On the CPU only, where a query holds Inf or NaN, SDPA's CPU kernel returns a finite row for
    such a query where softmax attention gives NaN, so CPU inputs with a non-finite query (and
    every CPU input under ``torch.compile``, which cannot branch on values) take an explicit
    matmul and softmax. The check is a CPU workaround for a CPU kernel: off the CPU it would cost
    a device sync per layer and, under ``torch.compile``, an L x L score matrix.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, context_dim: int = 0):
        super().__init__()
        _check_heads(dim, num_heads)
        checks.flag("qkv_bias", qkv_bias)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        if checks.integer("context_dim", context_dim, minimum=0):
            self.text_kv = nn.Linear(context_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, context: Optional[torch.Tensor] = None, keep: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """x (B, L, C); context (B, L_text, context_dim) and keep (B, L_text) bool or None, only
        with ``context_dim`` > 0 -> (B, L, C)."""
        B, L, C = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, L, d)
        if context is not None:
            tkv = self.text_kv(masked_context(context, keep, x.dtype))  # (B, L_text, 2C)
            tkv = tkv.view(B, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
            k, v = torch.cat([k, tkv[0]], dim=2), torch.cat([v, tkv[1]], dim=2)
            if keep is not None:
                keep = torch.cat([keep.new_ones(B, L), keep], dim=1)
        o = masked_attention(q, k, v, keep)
        return self.proj(o.transpose(1, 2).reshape(B, L, C))


def masked_context(context: torch.Tensor, keep: Optional[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """context (B, L, C) in ``dtype`` with the masked tokens (keep (B, L) False) replaced by zeros:
    what a projection may read, so that a non-finite masked token reaches no gradient either."""
    context = context.to(dtype)
    return context if keep is None else torch.where(keep[..., None], context, 0.0)


def masked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over (B, heads, N, d) queries and (B, heads, L, d) keys, values,
    with the key-padding mask ``keep`` (B, L) bool (True: attended to; None: all) -> (B, heads, N, d).

    A masked key and value are replaced by zeros (``torch.where``) before the attention, so that
    not even an Inf or NaN there reaches an output or a gradient; a row of ``keep`` with no True
    attends uniformly to those zeros and gives exactly 0, not NaN. SDPA on the whole, except on
    the CPU for a query holding Inf or NaN (see ``Attention``).
    """
    mask = None
    if keep is not None:
        sel = keep[:, None, :, None]
        k, v = torch.where(sel, k, 0.0), torch.where(sel, v, 0.0)
        mask = (keep | ~keep.any(1, keepdim=True))[:, None, None, :]
    if q.device.type != "cpu" or _finite(q):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return _softmax_attention(q, k, v, mask)


def _finite(t: torch.Tensor) -> bool:
    """False if t holds Inf or NaN (a float32 sum propagates both) or under ``torch.compile``; True
    on the meta device (no values)."""
    if torch.compiler.is_compiling():
        return False
    if t.device.type == "meta":
        return True
    return bool(torch.isfinite(t.sum(dtype=torch.float32)))


def _softmax_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over (B, heads, L, d), spelled out (in float32 for half inputs);
    ``mask`` (B, 1, 1, L) bool excludes the keys where it is False."""
    dtype = q.dtype
    compute = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    q, k, v = q.to(compute), k.to(compute), v.to(compute)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if mask is not None:
        scores = torch.where(mask, scores, float("-inf"))
    p = torch.softmax(scores, dim=-1)
    return (p @ v).to(dtype)


def _check_heads(dim: int, num_heads: int) -> None:
    checks.integer("dim", dim)
    checks.integer("num_heads", num_heads)
    checks.divisible("dim", dim, "num_heads", num_heads)
