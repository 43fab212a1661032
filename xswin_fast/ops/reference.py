"""PyTorch reference twins of every op in ``xswin_fast.ops``: the definition the kernels are tested
against, and the CPU training path (so they are written to be reasonably fast, not naive).

Inputs are assumed valid here; ``xswin_fast.ops`` checks them before dispatching.
"""
import math
from typing import Callable, Dict, Optional, Tuple, TypeVar

import torch
import torch.nn.functional as F

LOG_MAX_LOGIT_SCALE = math.log(100.0)

T = TypeVar("T")
_CONSTANTS: Dict[tuple, object] = {}


def cached_constant(key: tuple, build: Callable[[], T]) -> T:
    """``build()`` once per ``key`` for the life of the process, then the same object.

    The one cache of the package for constants that depend on shapes only, never on learned
    values: the window masks here, SwinV2's relative-coordinate tables, the sin-cos position
    embeddings. ``key`` names the constant and holds every argument of ``build``, including the
    device and dtype of a tensor copy (a handful of entries per model). Why this form:

    * a plain dict, not ``functools.lru_cache``: Dynamo traces through a dict lookup, but not
      through the lru_cache wrapper (it warns and re-traces the wrapped function into every
      compiled graph);
    * ``build`` creates its tensors with an explicit ``device="cpu"`` and moves them last: a
      cached tensor must not inherit a meta/cuda default-device context (FLOP counting builds
      models under ``torch.device("meta")``).

    Cached tensors are shared: never modify one in place.
    """
    if key not in _CONSTANTS:
        _CONSTANTS[key] = build()
    return _CONSTANTS[key]


# window attention


def _axis_regions(size: int, padded: int, window: int, shift: int) -> torch.Tensor:
    """Per shifted-frame position along one axis: (region id, is-real-token).

    Region ids follow Swin: the shifted frame is cut into [0, P-w), [P-w, P-s), [P-s, P).
    A shifted-frame position i holds the padded-map token (i + s) mod P, which is real when it
    is < size.
    """
    # explicit device: cached masks must not inherit a meta/cuda default-device context
    idx = torch.arange(padded, device="cpu")
    region = torch.zeros(padded, dtype=torch.long, device="cpu")
    if shift > 0:
        region[padded - window:padded - shift] = 1
        region[padded - shift:] = 2
    real = (idx + shift) % padded < size
    return region, real


def window_mask(
    H: int, W: int, window_size: Tuple[int, int], shift_size: Tuple[int, int]
) -> Optional[torch.Tensor]:
    """Boolean (nW, N, N) CPU mask of the pairs (query, key) allowed to attend, or None if all are.

    A real query attends to real keys of its own Swin region. Padded queries are never written
    back; they attend to keys of their region (their own position included), so that no softmax
    row is empty and no NaN can reach the gradients of real tokens. Cached (``cached_constant``).
    """
    key = ("window_mask", H, W, tuple(window_size), tuple(shift_size))
    return cached_constant(key, lambda: _build_window_mask(H, W, window_size, shift_size))


def _build_window_mask(H: int, W: int, window_size, shift_size) -> Optional[torch.Tensor]:
    (wh, ww), (sh, sw) = window_size, shift_size
    Hp, Wp = -(-H // wh) * wh, -(-W // ww) * ww
    if (sh, sw) == (0, 0) and (Hp, Wp) == (H, W):
        return None
    reg_h, real_h = _axis_regions(H, Hp, wh, sh)
    reg_w, real_w = _axis_regions(W, Wp, ww, sw)
    region = (reg_h[:, None] * 3 + reg_w[None, :])  # (Hp, Wp)
    real = real_h[:, None] & real_w[None, :]

    def windows(t):  # (Hp, Wp) -> (nW, N)
        return t.view(Hp // wh, wh, Wp // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)

    region, real = windows(region), windows(real)
    same_region = region[:, :, None] == region[:, None, :]
    allowed = same_region & (real[:, None, :] | ~real[:, :, None])
    return allowed


def _additive_mask(H, W, window_size, shift_size, device, dtype) -> Optional[torch.Tensor]:
    """``window_mask`` as an additive (nW, 1, N, N) mask on ``device``: 0 allowed, -inf masked."""

    def build():
        allowed = window_mask(H, W, window_size, shift_size)
        if allowed is None:
            return None
        neg = torch.zeros(allowed.shape, dtype=dtype, device="cpu").masked_fill_(~allowed, float("-inf"))
        return neg.to(device)[:, None]

    return cached_constant(("additive_mask", H, W, tuple(window_size), tuple(shift_size), device, dtype), build)


def pad_and_shift(x: torch.Tensor, window_size, shift_size) -> torch.Tensor:
    """(B, H, W, ...) -> (B, Hp, Wp, ...): padded bottom/right to window multiples, then shifted so
    that position (i, j) holds padded token ((i + sh) mod Hp, (j + sw) mod Wp)."""
    H, W = x.shape[1:3]
    (wh, ww), (sh, sw) = window_size, shift_size
    ph, pw = (-H) % wh, (-W) % ww
    if ph or pw:
        x = F.pad(x, (0,) * (2 * (x.dim() - 3)) + (0, pw, 0, ph))
    if sh or sw:
        x = torch.roll(x, shifts=(-sh, -sw), dims=(1, 2))
    return x


def _to_windows(x: torch.Tensor, window_size, shift_size) -> torch.Tensor:
    """(B, H, W, heads, d) -> (B, nW * heads, N, d), padded bottom/right and cyclically shifted."""
    B, _, _, nh, d = x.shape
    (wh, ww) = window_size
    x = pad_and_shift(x, window_size, shift_size)
    Hp, Wp = x.shape[1:3]
    x = x.reshape(B, Hp // wh, wh, Wp // ww, ww, nh, d).permute(0, 1, 3, 5, 2, 4, 6)
    return x.reshape(B, -1, wh * ww, d)


def _from_windows(x: torch.Tensor, H: int, W: int, nh: int, window_size, shift_size) -> torch.Tensor:
    """(B, nW * heads, N, d) -> (B, H, W, heads * d) at the tokens' original positions."""
    B, _, _, d = x.shape
    (wh, ww), (sh, sw) = window_size, shift_size
    Hp, Wp = -(-H // wh) * wh, -(-W // ww) * ww
    x = x.reshape(B, Hp // wh, Wp // ww, nh, wh, ww, d).permute(0, 1, 4, 2, 5, 3, 6)
    x = x.reshape(B, Hp, Wp, nh, d)
    if sh or sw:
        x = torch.roll(x, shifts=(sh, sw), dims=(1, 2))
    return x[:, :H, :W].reshape(B, H, W, nh * d)


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window_size: Tuple[int, int],
    shift_size: Tuple[int, int] = (0, 0),
    bias: Optional[torch.Tensor] = None,
    logit_scale: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """Reference of ``xswin_fast.ops.window_attention`` (docs/design.md §3.1); returns (B, H, W, heads*d).

    roll -> pad -> partition, then one ``scaled_dot_product_attention`` call with the
    relative-position bias, the Swin region mask and the padding mask folded into a single
    additive mask (masked pairs get -inf: probability exactly 0).
    """
    B, H, W, nh, d = q.shape
    window_size, shift_size = tuple(window_size), tuple(shift_size)
    if logit_scale is not None and q.dtype in (torch.float16, torch.bfloat16):
        # scores reach the temperature (up to 100): normalising and scaling in half precision
        # would err by ~temperature * 2^-mantissa, far above the output's rounding
        out = window_attention(q.float(), k.float(), v.float(), window_size, shift_size,
                               None if bias is None else bias.float(), logit_scale, scale)
        return out.to(q.dtype)
    if logit_scale is not None:
        # cosine attention (SwinV2): the per-head temperature is folded into q
        temp = torch.clamp(logit_scale, max=LOG_MAX_LOGIT_SCALE).exp().to(q.dtype)
        q = F.normalize(q, dim=-1) * temp.view(1, 1, 1, nh, 1)
        k = F.normalize(k, dim=-1)
        scale = 1.0
    elif scale is None:
        scale = d ** -0.5
    qw = _to_windows(q, window_size, shift_size)
    kw = _to_windows(k, window_size, shift_size)
    vw = _to_windows(v, window_size, shift_size)
    N = qw.shape[2]
    nW = qw.shape[1] // nh

    attn_mask = _additive_mask(H, W, window_size, shift_size, q.device, q.dtype)  # (nW, 1, N, N)
    if bias is not None:
        b = bias.to(q.dtype)[None]  # (1, heads, N, N)
        attn_mask = b if attn_mask is None else attn_mask + b
    if attn_mask is not None:
        attn_mask = attn_mask.expand(nW, nh, N, N).reshape(nW * nh, N, N)
    o = F.scaled_dot_product_attention(qw, kw, vw, attn_mask=attn_mask, scale=scale)
    return _from_windows(o, H, W, nh, window_size, shift_size)


# adaptive LayerNorm modulation


def _per_sample(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B, C) -> (B, 1, ..., 1, C), broadcasting over the token dims of x."""
    return t.view(t.shape[0], *([1] * (x.dim() - 2)), t.shape[-1])


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x * (1 + scale) + shift, with (B, C) shift/scale broadcast over the tokens of each sample."""
    return x * (1 + _per_sample(scale, x)) + _per_sample(shift, x)


def layernorm_modulate(x, shift, scale, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm without affine over C, then modulate (DiT's adaLN)."""
    return modulate(F.layer_norm(x, x.shape[-1:], eps=eps), shift, scale)


def gated_residual(x, y, gate) -> torch.Tensor:
    """x + gate * y (DiT's adaLN-Zero residual)."""
    return x + _per_sample(gate, x) * y


def modulate_layernorm(x, shift, scale, weight=None, bias=None, eps: float = 1e-5) -> torch.Tensor:
    """Modulate, then LayerNorm with optional affine (the XSwin ViT bottleneck's order)."""
    return F.layer_norm(modulate(x, shift, scale), x.shape[-1:], weight, bias, eps)


def residual_layernorm(x, y, weight=None, bias=None, keep=None, eps: float = 1e-5) -> torch.Tensor:
    """x + keep * LayerNorm(y): the post-norm residual of the SwinV2 blocks.

    ``keep`` (B,) is an optional per-sample multiplier (stochastic depth: 0 or 1/(1-p)).
    """
    y = F.layer_norm(y, y.shape[-1:], weight, bias, eps)
    if keep is not None:
        y = y * keep.view(-1, *([1] * (y.dim() - 1)))
    return x + y
