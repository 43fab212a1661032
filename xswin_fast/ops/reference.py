"""PyTorch reference twins of every op in ``xswin_fast.ops``: the definition the kernels are tested
against, and the CPU training path (so they are written to be reasonably fast, not naive).

Inputs are assumed valid here; ``xswin_fast.ops`` checks them before dispatching.
"""
import math
from typing import Callable, Dict, List, Optional, Tuple, TypeVar

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import _disable_current_modes

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

    * under ``torch.compile`` the cache is neither read nor filled: ``build`` is traced into the
      graph (its tensors depend on no input and become graph constants), since a cache filled
      inside a compiled region changes state that the graph is guarded on and forces a recompile
      on the next call;
    * ``build`` runs with no ``TorchDispatchMode`` active, so a constant first asked for under one
      (``op_calls.NoCompute``, whose big ops return uninitialised outputs; a FLOP counter) holds
      real values for every later caller.

    Cached tensors are shared: never modify one in place.
    """
    if torch.compiler.is_compiling():
        return build()
    if key not in _CONSTANTS:
        with _disable_current_modes():
            _CONSTANTS[key] = build()
    return _CONSTANTS[key]


# window attention


def _axis_regions(size: int, padded: int, window: int, shift: int) -> Tuple[List[int], List[bool]]:
    """Per shifted-frame position along one axis: (region id, is-real-token), as Python lists.

    Region ids follow Swin: the shifted frame is cut into [0, P-w), [P-w, P-s), [P-s, P).
    A shifted-frame position i holds the padded-map token (i + s) mod P, which is real when it
    is < size.
    """
    region = [0 if shift == 0 or i < padded - window else 1 if i < padded - shift else 2 for i in range(padded)]
    real = [(i + shift) % padded < size for i in range(padded)]
    return region, real


def window_regions(H: int, W: int, window_size: Tuple[int, int], shift_size: Tuple[int, int]):
    """(region, real): (nW, N) CPU tensors of every window slot's Swin region id (0..8) and
    whether it holds a real (not padded) token. Cached (``cached_constant``)."""
    key = ("window_regions", H, W, tuple(window_size), tuple(shift_size))
    return cached_constant(key, lambda: _build_window_regions(H, W, window_size, shift_size))


def _build_window_regions(H: int, W: int, window_size, shift_size):
    (wh, ww), (sh, sw) = window_size, shift_size
    Hp, Wp = -(-H // wh) * wh, -(-W // ww) * ww
    # explicit device: cached masks must not inherit a meta/cuda default-device context
    reg_h, real_h = (torch.tensor(a, device="cpu") for a in _axis_regions(H, Hp, wh, sh))
    reg_w, real_w = (torch.tensor(a, device="cpu") for a in _axis_regions(W, Wp, ww, sw))
    region = (reg_h[:, None] * 3 + reg_w[None, :])  # (Hp, Wp)
    real = real_h[:, None] & real_w[None, :]
    return _frame_windows(region, window_size), _frame_windows(real, window_size)


def _frame_windows(t: torch.Tensor, window_size) -> torch.Tensor:
    """(Hp, Wp) per shifted-frame position -> (nW, N) per window slot."""
    (Hp, Wp), (wh, ww) = t.shape, window_size
    return t.view(Hp // wh, wh, Wp // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)


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
    if (sh, sw) == (0, 0) and H % wh == 0 and W % ww == 0:
        return None  # decided in Python: no tensor is read back while tracing
    region, real = window_regions(H, W, window_size, shift_size)
    same_region = region[:, :, None] == region[:, None, :]
    return same_region & (real[:, None, :] | ~real[:, :, None])


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
    finite: Optional[bool] = None,
) -> torch.Tensor:
    """Reference of ``xswin_fast.ops.window_attention`` (docs/design.md §3.1); returns (B, H, W, heads*d).

    roll -> pad -> partition, then attention per window. With finite q, k, v and bias: one
    ``scaled_dot_product_attention`` call whose float mask holds the relative-position bias
    where a pair is allowed and -inf where it is masked (probability exactly 0). Otherwise
    ``_exact_attention``, where a masked key contributes exactly nothing even when it holds Inf
    or NaN (SDPA cannot: NaN + (-inf) is NaN, 0 x Inf is NaN, and its CPU kernel turns a NaN
    query row into zeros).

    ``finite`` (bool or None): None decides as the global ``Attention`` does (``_sdpa_is_exact``):
    off the CPU the SDPA path without looking at the values (a look would synchronise with the
    host on every call; an Inf or NaN then spreads as it does in SDPA), on the CPU the values are
    looked at, and under ``torch.compile`` on the CPU the exact path. True is the caller's promise
    that every input is finite and takes the SDPA path without looking (what a fair
    ``torch.compile`` baseline compiles); False takes the exact path.
    """
    if finite is not None and not isinstance(finite, bool):
        raise TypeError(f"finite must be None, True or False, got {finite!r}")
    B, H, W, nh, d = q.shape
    window_size, shift_size = tuple(window_size), tuple(shift_size)
    if logit_scale is not None and q.dtype in (torch.float16, torch.bfloat16):
        # scores reach the temperature (up to 100): normalising and scaling in half precision
        # would err by ~temperature * 2^-mantissa, far above the output's rounding
        out = window_attention(q.float(), k.float(), v.float(), window_size, shift_size,
                               None if bias is None else bias.float(), logit_scale, scale, finite)
        return out.to(q.dtype)
    if logit_scale is not None:
        # cosine attention (SwinV2): the per-head temperature is folded into q
        temp = torch.clamp(logit_scale, max=LOG_MAX_LOGIT_SCALE).exp().to(q.dtype)
        q = F.normalize(q, dim=-1) * temp.view(1, 1, 1, nh, 1)
        k = F.normalize(k, dim=-1)
        scale = 1.0
    elif scale is None:
        scale = d ** -0.5
    bias = None if bias is None else bias.to(q.dtype)
    qw = _to_windows(q, window_size, shift_size)
    kw = _to_windows(k, window_size, shift_size)
    vw = _to_windows(v, window_size, shift_size)
    geometry = (H, W, window_size, shift_size)
    if finite if finite is not None else _sdpa_is_exact(q, k, v, bias):
        o = F.scaled_dot_product_attention(qw, kw, vw, attn_mask=_score_mask(geometry, bias, nh, q), scale=scale)
    else:
        o = _exact_attention(qw, kw, vw, geometry, bias, nh, scale)
    return _from_windows(o, H, W, nh, window_size, shift_size)


def _sdpa_is_exact(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether to take the SDPA path when the caller promised nothing (``finite=None``).

    Off the CPU: True without looking, as the global ``Attention`` decides (a look reads a value
    back, a host sync on every call). On the CPU: False under ``torch.compile`` (a branch on a
    tensor's value would break the graph), else whether every element is finite: one float32 sum
    per tensor (Inf and NaN propagate through it; a finite sum that overflows only costs the
    exact path).
    """
    if tensors[0].device.type != "cpu":
        return True
    if torch.compiler.is_compiling():
        return False
    return bool(torch.isfinite(sum(t.sum(dtype=torch.float32) for t in tensors if t is not None)))


def _score_mask(geometry, bias: Optional[torch.Tensor], nh: int, like: torch.Tensor) -> Optional[torch.Tensor]:
    """The (nW * heads, N, N) float mask that SDPA adds to the scores: ``bias`` (heads, N, N)
    where a pair is allowed, -inf where it is masked (selected, not added, so that a non-finite
    bias of a masked pair stays out), or None when nothing is masked and there is no bias."""
    allowed = window_mask(*geometry)
    nW, N = window_regions(*geometry)[0].shape
    if allowed is None:
        return None if bias is None else bias[None].expand(nW, nh, N, N).reshape(nW * nh, N, N)
    key = ("window_mask_on", *geometry, like.device)
    allowed = cached_constant(key, lambda: allowed.to(like.device))[:, None]  # (nW, 1, N, N)
    zero = torch.zeros((), dtype=like.dtype, device=like.device) if bias is None else bias[None]
    return torch.where(allowed, zero, float("-inf")).expand(nW, nh, N, N).reshape(nW * nh, N, N)


def _exact_attention(qw, kw, vw, geometry, bias: Optional[torch.Tensor], nh: int, scale: float) -> torch.Tensor:
    """Window attention (B, nW*heads, N, d) -> (B, nW*heads, N, d) in which a query's output and
    gradients depend only on the keys it may attend to, whatever values the others hold.

    The real queries of one Swin region attend to exactly the real keys of that region, and a
    window holds at most 2 x 2 regions. So the windows are computed once per region rank (up to
    4 passes): in pass (a, b) each window keeps the real slots of its a-th row region and b-th
    column region, the q, k and v of every other slot are replaced by zeros (a select, never a
    multiplication: 0 x Inf is NaN) and attend to themselves only, and the kept rows are selected
    into the output. Scores go through an explicit matmul and softmax (in float32 for
    half-precision inputs), so a non-finite query row stays non-finite.
    """
    device, dtype = qw.device, qw.dtype
    compute = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    out = torch.zeros_like(qw, dtype=compute)
    for sel, pairs in _region_passes(geometry, nh, device):
        qr, kr, vr = (torch.where(sel, t, 0).to(compute) for t in (qw, kw, vw))
        s = torch.matmul(qr, kr.transpose(-2, -1)) * scale
        if bias is not None:
            s = s + bias.to(compute).repeat(len(pairs) // nh, 1, 1)
        p = torch.softmax(torch.where(pairs, s, float("-inf")), dim=-1)
        out = torch.where(sel, torch.matmul(p, vr), out)
    return out.to(dtype)


def _region_passes(geometry, nh: int, device) -> list:
    """The passes of ``_exact_attention``: (sel (nW*heads, N, 1), pairs (nW*heads, N, N)), boolean,
    on ``device``. ``sel`` marks the kept slots (one region per window); ``pairs`` lets them
    attend to each other and every other slot to itself only. Cached (``cached_constant``)."""

    def build():
        H, W, window_size, shift_size = geometry
        (rank_h, n_h), (rank_w, n_w) = (
            _axis_region_ranks(size, window, shift) for size, window, shift in zip((H, W), window_size, shift_size)
        )
        rank_h, rank_w = torch.tensor(rank_h, device="cpu"), torch.tensor(rank_w, device="cpu")
        N = window_size[0] * window_size[1]
        eye = torch.eye(N, dtype=torch.bool, device="cpu")
        passes = []
        for a in range(n_h):
            for b in range(n_w):
                sel = _frame_windows((rank_h == a)[:, None] & (rank_w == b)[None, :], window_size)  # (nW, N)
                pairs = (sel[:, :, None] & sel[:, None, :]) | (eye & ~sel[:, :, None])
                nW = sel.shape[0]
                sel = sel[:, None].expand(nW, nh, N).reshape(nW * nh, N, 1)
                pairs = pairs[:, None].expand(nW, nh, N, N).reshape(nW * nh, N, N)
                passes.append((sel.to(device), pairs.to(device)))
        return passes

    return cached_constant(("region_passes", *geometry, nh, device), build)


def _axis_region_ranks(size: int, window: int, shift: int) -> Tuple[List[int], int]:
    """Per shifted-frame position along one axis: the rank of its region among the regions of the
    real positions of its window (-1 for padding), and the most regions a window holds (1 or 2).
    Plain Python, so that no tensor is read back while tracing."""
    padded = -(-size // window) * window
    region, real = _axis_regions(size, padded, window, shift)
    ranks, most = [], 1
    for start in range(0, padded, window):
        span = range(start, start + window)
        present = sorted({region[i] for i in span if real[i]})  # never empty: padding < window
        most = max(most, len(present))
        ranks += [present.index(region[i]) if real[i] else -1 for i in span]
    return ranks, most


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
