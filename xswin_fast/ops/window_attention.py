"""``window_attention``: shifted-window self- and cross-attention (docs/design.md §3.1)."""
import math
from typing import Optional, Sequence

import torch

from . import checks, reference
from .dispatch import use_triton

__all__ = ["window_attention"]


def _kernel():
    # imported on first use: the reference path must work where triton cannot be imported
    from xswin_fast.kernels import window_attention as kernel

    return kernel


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window_size: Sequence[int],
    shift_size: Sequence[int] = (0, 0),
    bias: Optional[torch.Tensor] = None,
    logit_scale: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
    out: Optional[torch.Tensor] = None,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Attention inside (shifted) windows of a (B, H, W) token map.

    Args:
        q, k, v (Tensor): (B, H, W, heads, d), float32/float16/bfloat16, any strides (e.g. views
            into one fused qkv projection). For cross-attention q comes from one map and k, v
            from another of the same size.
        window_size ((int, int)): (wh, ww), each >= 1 and at most the map's (H, W) (ValueError
            otherwise: clamp it to the map).
        shift_size ((int, int)): cyclic shift (sh, sw), 0 <= s < window. Default: (0, 0).
        bias (Tensor, Optional): (heads, wh*ww, wh*ww) additive relative-position bias.
        logit_scale (Tensor, Optional): (heads,). Selects cosine attention (SwinV2): q and k
            are L2-normalised over d and scores are multiplied by exp(min(logit_scale, log 100)).
        scale (float, Optional): score scale of dot-product mode. Default: d ** -0.5.
        out (Tensor, Optional): (B, H, W, heads*d) output view to write into and return, e.g.
            one half of a (B, H, W, 2C) concatenation buffer. It must share no memory with an
            input and must not overlap itself (ValueError otherwise).
        backend (str, Optional): None (automatic), "torch" or "triton".

    Returns:
        Tensor: (B, H, W, heads*d), each token at its original (un-shifted, un-padded) position.

    The map is padded bottom/right to window multiples, cyclically shifted (shifted-frame
    position (i, j) holds padded token ((i+sh) mod Hp, (j+sw) mod Wp)), split into windows,
    Swin's region mask applies when shifted, and padded keys are never attended to.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        checks.floating(name, t)
        if t.dim() != 5:
            raise ValueError(f"{name} must have shape (B, H, W, heads, d), got {tuple(t.shape)}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"q, k and v must have one shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k and v must have one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    B, H, W, nh, d = q.shape
    if min(B, H, W, nh, d) == 0:
        raise ValueError(f"q must not be empty, got shape {tuple(q.shape)}")
    wh, ww = checks.pair("window_size", window_size)
    sh, sw = checks.pair("shift_size", shift_size)
    if wh < 1 or ww < 1:
        raise ValueError(f"window_size must be >= 1, got {(wh, ww)}")
    if not (0 <= sh < wh and 0 <= sw < ww):
        raise ValueError(f"shift_size must satisfy 0 <= shift < window, got shift {(sh, sw)} for window {(wh, ww)}")
    if wh > H or ww > W:
        # the map is padded to window multiples and the mask is (padded tokens)^2: a window of
        # 1024 x 1024 on a 5 x 7 map would need 2^40 mask entries for what a 5 x 7 window computes
        raise ValueError(
            f"window_size {(wh, ww)} must fit the map (H, W) = {(H, W)}: clamp it to the map (a larger "
            f"window only adds padding; Swin, and xswin_fast's layers, clamp it and drop the shift)"
        )
    N = wh * ww
    if bias is not None:
        checks.floating("bias", bias)
        if tuple(bias.shape) != (nh, N, N):
            raise ValueError(f"bias must have shape (heads, N, N) = {(nh, N, N)}, got {tuple(bias.shape)}")
    if logit_scale is not None:
        checks.floating("logit_scale", logit_scale)
        if tuple(logit_scale.shape) != (nh,):
            raise ValueError(f"logit_scale must have shape (heads,) = ({nh},), got {tuple(logit_scale.shape)}")
        if scale is not None:
            raise ValueError("scale applies to dot-product attention only; pass it or logit_scale, not both")
    if scale is not None and not (isinstance(scale, (int, float)) and math.isfinite(scale)):
        raise TypeError(f"scale must be a finite float, got {scale!r}")
    if out is not None:
        checks.floating("out", out)
        if tuple(out.shape) != (B, H, W, nh * d):
            raise ValueError(f"out must have shape (B, H, W, heads*d) = {(B, H, W, nh * d)}, got {tuple(out.shape)}")
        if out.dtype != q.dtype:
            raise TypeError(f"out must have dtype {q.dtype}, got {out.dtype}")
    checks.same_device(q=q, k=k, v=v, bias=bias, logit_scale=logit_scale, out=out)
    if out is not None:
        checks.writable_output(out, q=q, k=k, v=v, bias=bias, logit_scale=logit_scale)

    args = (q, k, v, (wh, ww), (sh, sw), bias, logit_scale, scale)
    tensors = (q, k, v, bias, logit_scale, out)
    if use_triton("window_attention", backend, tensors, lambda: _kernel().unsupported_reason(*args)):
        return _kernel().window_attention(*args, out=out)
    o = reference.window_attention(*args)
    if out is None:
        return o
    out.copy_(o)
    return out
