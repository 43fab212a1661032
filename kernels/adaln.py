"""Fused adaptive-LayerNorm modulation kernels (docs/design.md §3.2), forward and backward.

Five fused forms, each one read of its token inputs and one write of its output:

    modulate            out = x * (1 + scale) + shift
    layernorm_modulate  out = LN(x) * (1 + scale) + shift                        (DiT)
    gated_residual      out = x + gate * y                                       (DiT adaLN-Zero)
    modulate_layernorm  out = LN(x * (1 + scale) + shift) * weight + bias        (XSwin ViT bottleneck)
    residual_layernorm  out = x + keep * (LN(y) * weight + bias)                 (post-norm SwinV2 blocks)

Token tensors are (B, ..., C), seen by the kernels as (B, T, C) through their strides, so the
channels-first conv maps that ``Modulator`` permutes to (B, H, W, C) are read in place; shift,
scale and gate are (B, C) rows (any row stride: slices of one batched projection need no copy),
keep is (B,), weight and bias are (C,). Math and statistics are fp32; ``1 + scale`` is formed in
fp32; outputs take the promoted dtype of the inputs, as the reference does.

Programs never straddle samples: program (b, p) walks tokens [p*TPP, (p+1)*TPP) of sample b in
tiles of BT full rows. Backward kernels keep the per-sample (dshift, dscale, dgate, dkeep) and
per-channel (dweight, dbias) sums of their tokens in fp32 registers and write one partial per
program; ``sum_partials_kernel`` then reduces the partials in a fixed order. No atomics, so the
gradients are bitwise reproducible. LayerNorm statistics are recomputed in the backward pass
(x is read there anyway) instead of being saved.

Layout: the jit kernels live in ``adaln_fwd`` (with the tile helpers) and ``adaln_bwd``; this
file holds the row plan -> launchers -> one ``torch.library.custom_op`` per forward and per
backward launcher (``xswin_fast::<op>_fwd`` / ``_bwd``, with fake implementations, so
``torch.compile(fullgraph=True)`` traces them as opaque ops; the forward op carries its backward
through ``register_autograd``) -> ``unsupported_reason`` and the entry points that
``xswin_fast.ops`` calls, as in ``kernels/window_attention.py``.
"""
from typing import List, NamedTuple, Optional, Tuple

import torch
import triton

from . import INTERPRET, device
from .adaln_bwd import (gated_residual_bwd_kernel, modulate_bwd_kernel, modulate_layernorm_bwd_kernel,
                        residual_layernorm_bwd_kernel, sum_partials_kernel)
from .adaln_fwd import (gated_residual_fwd_kernel, modulate_fwd_kernel, modulate_layernorm_fwd_kernel,
                        residual_layernorm_fwd_kernel)

__all__ = [
    "OPS",
    "MAX_CHANNELS",
    "modulate",
    "layernorm_modulate",
    "gated_residual",
    "modulate_layernorm",
    "residual_layernorm",
    "unsupported_reason",
]

# the ops of xswin_fast.ops implemented here (one entry point each)
OPS = ("modulate", "layernorm_modulate", "gated_residual", "modulate_layernorm", "residual_layernorm")
# whole rows live in one tile (the LayerNorm forms reduce over C)
MAX_CHANNELS = 8192
# inputs of other dtypes are computed in fp32 all the same, but only these are tested
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # computed in float32
# elements of one [BT, BC] tile; the interpreter pays per program and per op, not per element
TILE_ELEMENTS = 16384 if INTERPRET else 4096


# row plan


class RowPlan(NamedTuple):
    """Launch configuration of one adaLN kernel call."""

    # (B, programs per sample)
    grid: Tuple[int, int]
    # tokens per program, walked in tiles of BT full rows of BC (>= C) channels
    TPP: int
    BT: int
    BC: int
    num_warps: int
    # explicit register cap (None: ptxas's own budget)
    maxnreg: Optional[int] = None

    @property
    def options(self) -> dict:
        """Launch options: the warps, and the register cap where the target needs one."""
        return dict(num_warps=self.num_warps, **({"maxnreg": self.maxnreg} if self.maxnreg else {}))


def _programs_per_sample(B: int, n_tiles: int, dev: torch.device) -> int:
    """Programs that share one sample's tokens: enough to fill the GPU, one under the interpreter."""
    sms = device.multiprocessors(dev)
    if sms is None:
        return 1
    return max(1, min(n_tiles, triton.cdiv(4 * sms, max(B, 1))))


def _plan(B: int, T: int, C: int, dev: torch.device) -> RowPlan:
    """Tile (BT rows x BC channels), tokens per program and the (B, P) grid."""
    BC = triton.next_power_of_2(C)
    BT = max(1, min(TILE_ELEMENTS // BC, triton.next_power_of_2(max(T, 1))))
    n_tiles = triton.cdiv(T, BT)
    P = _programs_per_sample(B, n_tiles, dev)
    TPP = triton.cdiv(n_tiles, P) * BT
    P = triton.cdiv(T, TPP)
    # 4 warps up to 2048 elements, 16 for 8192-wide rows (the backward holds ~7 tiles live)
    return RowPlan(grid=(B, P), TPP=TPP, BT=BT, BC=BC, num_warps=min(16, max(4, BT * BC // 512)),
                   maxnreg=device.architecture(dev).token_maxnreg)


# launchers


def _token_strides(t: torch.Tensor) -> Optional[Tuple[int, int, int]]:
    """(B, T, C) strides of t (B, ..., C), or None when its token dims do not fold into one stride."""
    dims = [(n, s) for n, s in zip(t.shape[1:-1], t.stride()[1:-1]) if n != 1]
    for (_, s0), (n1, s1) in zip(dims, dims[1:]):
        if s0 != s1 * n1:
            return None
    return t.stride(0), (dims[-1][1] if dims else 0), t.stride(-1)


def _btc(t: torch.Tensor, name: str) -> Tuple[torch.Tensor, dict]:
    """t and its (B, T, C) strides as the kernel arguments s_<name>b, s_<name>t, s_<name>c; t is
    copied to contiguous only if its token dims do not fold into one stride."""
    strides = _token_strides(t)
    if strides is None:
        t = t.contiguous()
        strides = _token_strides(t)
    return t, {f"s_{name}{axis}": s for axis, s in zip("btc", strides)}


def _rows(t: torch.Tensor) -> torch.Tensor:
    """A (B, C) or (C,) or (B,) parameter with unit innermost stride (row slices are used in place)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _new_tokens(like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor of like's shape: channels-first if like is a permuted (B, C, ...) map."""
    if like.dim() > 2 and like.stride(-1) != 1 and like.movedim(-1, 1).is_contiguous():
        shape = (like.shape[0], like.shape[-1], *like.shape[1:-1])
        return torch.empty(shape, dtype=dtype, device=like.device).movedim(1, -1)
    return torch.empty(like.shape, dtype=dtype, device=like.device)


def _promote(*tensors: Optional[torch.Tensor]) -> torch.dtype:
    dtype = None
    for t in tensors:
        if t is not None:
            dtype = t.dtype if dtype is None else torch.promote_types(dtype, t.dtype)
    return dtype


def _dims(x: torch.Tensor) -> Tuple[int, int, int]:
    B, C = x.shape[0], x.shape[-1]
    return B, (x.numel() // (B * C) if B * C else 0), C


def _tokens_plan(x: torch.Tensor) -> Tuple[RowPlan, int, int]:
    """The row plan of x (B, ..., C), its tokens per sample T and channels C."""
    B, T, C = _dims(x)
    return _plan(B, T, C, x.device), T, C


def _sum_partials(part: torch.Tensor, outs: List[torch.Tensor]) -> None:
    """outs[k] (R, C) = part[k] (R, P, C) summed over P, for one or two outs."""
    K, R, P, C = part.shape
    BC = min(triton.next_power_of_2(C), 1024 if INTERPRET else 128)
    BP = max(1, min(triton.next_power_of_2(P), TILE_ELEMENTS // BC))
    sum_partials_kernel[(R, triton.cdiv(C, BC), K)](part=part, o1=outs[0], o2=outs[-1], R=R, P=P, C=C, BP=BP, BC=BC)


def _reduce_per_sample(part: torch.Tensor, like: List[torch.Tensor]) -> List[torch.Tensor]:
    """(K, B, P, C) partials -> K tensors (B, C) in the dtypes of like."""
    outs = [torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in like]
    for k in range(0, len(outs), 2):
        _sum_partials(part[k:k + 2], outs[k:k + 2])
    return outs


def _reduce_affine(part: torch.Tensor, weight, bias) -> List[torch.Tensor]:
    """(2, B, P, C) partials of (dweight, dbias) -> [dweight] if weight + [dbias] if bias, (C,) each."""
    _, B, P, C = part.shape
    present = [t for t in (weight, bias) if t is not None]
    outs = [torch.empty((1, C), dtype=t.dtype, device=t.device) for t in present]
    # a lone weight or bias reduces only its own partials
    _sum_partials(part.view(2, 1, B * P, C)[0 if weight is not None else 1:2 if bias is not None else 1], outs)
    return [o.view(C) for o in outs]


def modulate_fwd(x, shift, scale, eps: float = 0.0, norm: bool = False) -> torch.Tensor:
    """(LN(x) if norm else x) * (1 + scale) + shift; x (B, ..., C), shift/scale (B, C)."""
    o = _new_tokens(x, _promote(x, shift, scale))
    if o.numel() == 0:
        return o
    plan, T, C = _tokens_plan(x)
    x, s_x = _btc(x, "x")
    _, s_o = _btc(o, "o")
    shift, scale = _rows(shift), _rows(scale)
    modulate_fwd_kernel[plan.grid](
        x=x, shift=shift, scale=scale, o=o, T=T, C=C, eps=eps, TPP=plan.TPP, **s_x, **s_o,
        s_shift=shift.stride(0), s_scale=scale.stride(0), NORM=norm, BT=plan.BT, BC=plan.BC, **plan.options,
    )
    return o


def modulate_bwd(x, shift, scale, do, eps: float = 0.0, norm: bool = False) -> List[torch.Tensor]:
    """[dx, dshift, dscale] of modulate_fwd."""
    dx = _new_tokens(x, x.dtype)
    if dx.numel() == 0:
        return [dx, torch.zeros_like(shift), torch.zeros_like(scale)]
    plan, T, C = _tokens_plan(x)
    part = torch.empty((2, x.shape[0], plan.grid[1], C), dtype=torch.float32, device=x.device)
    x, s_x = _btc(x, "x")
    do, s_do = _btc(do, "do")
    _, s_dx = _btc(dx, "dx")
    scale_rows = _rows(scale)
    modulate_bwd_kernel[plan.grid](
        x=x, scale=scale_rows, do=do, dx=dx, part=part, T=T, C=C, eps=eps, TPP=plan.TPP, **s_x, **s_do, **s_dx,
        s_scale=scale_rows.stride(0), NORM=norm, BT=plan.BT, BC=plan.BC, **plan.options,
    )
    return [dx, *_reduce_per_sample(part, [shift, scale])]


def gated_residual_fwd(x, y, gate) -> torch.Tensor:
    """x + gate * y; x, y (B, ..., C), gate (B, C)."""
    o = _new_tokens(x, _promote(x, y, gate))
    if o.numel() == 0:
        return o
    plan, T, C = _tokens_plan(x)
    x, s_x = _btc(x, "x")
    y, s_y = _btc(y, "y")
    _, s_o = _btc(o, "o")
    gate = _rows(gate)
    gated_residual_fwd_kernel[plan.grid](
        x=x, y=y, gate=gate, o=o, T=T, C=C, TPP=plan.TPP, **s_x, **s_y, **s_o, s_gate=gate.stride(0),
        BT=plan.BT, BC=plan.BC, **plan.options,
    )
    return o


def gated_residual_bwd(y, gate, do) -> List[torch.Tensor]:
    """[dy, dgate] of gated_residual_fwd (dx is do itself)."""
    dy = _new_tokens(y, y.dtype)
    if dy.numel() == 0:
        return [dy, torch.zeros_like(gate)]
    plan, T, C = _tokens_plan(y)
    part = torch.empty((1, y.shape[0], plan.grid[1], C), dtype=torch.float32, device=y.device)
    y, s_y = _btc(y, "y")
    do, s_do = _btc(do, "do")
    _, s_dy = _btc(dy, "dy")
    gate_rows = _rows(gate)
    gated_residual_bwd_kernel[plan.grid](
        y=y, gate=gate_rows, do=do, dy=dy, part=part, T=T, C=C, TPP=plan.TPP, **s_y, **s_do, **s_dy,
        s_gate=gate_rows.stride(0), BT=plan.BT, BC=plan.BC, **plan.options,
    )
    return [dy, *_reduce_per_sample(part, [gate])]


def modulate_layernorm_fwd(x, shift, scale, weight, bias, eps: float) -> torch.Tensor:
    """LN(x * (1 + scale) + shift) * weight + bias; weight, bias (C,) or None."""
    o = _new_tokens(x, _promote(x, shift, scale, weight, bias))
    if o.numel() == 0:
        return o
    plan, T, C = _tokens_plan(x)
    x, s_x = _btc(x, "x")
    _, s_o = _btc(o, "o")
    shift, scale = _rows(shift), _rows(scale)
    modulate_layernorm_fwd_kernel[plan.grid](
        x=x, shift=shift, scale=scale, w=_rows(weight) if weight is not None else x,
        b=_rows(bias) if bias is not None else x, o=o, T=T, C=C, eps=eps, TPP=plan.TPP, **s_x, **s_o,
        s_shift=shift.stride(0), s_scale=scale.stride(0), HAS_W=weight is not None, HAS_B=bias is not None,
        BT=plan.BT, BC=plan.BC, **plan.options,
    )
    return o


def modulate_layernorm_bwd(x, shift, scale, weight, bias, do, eps: float) -> List[torch.Tensor]:
    """[dx, dshift, dscale] + [dweight] if weight + [dbias] if bias, of modulate_layernorm_fwd."""
    dx = _new_tokens(x, x.dtype)
    affine = [t for t in (weight, bias) if t is not None]
    if dx.numel() == 0:
        return [dx, torch.zeros_like(shift), torch.zeros_like(scale), *map(torch.zeros_like, affine)]
    plan, T, C = _tokens_plan(x)
    part = torch.empty((4, x.shape[0], plan.grid[1], C), dtype=torch.float32, device=x.device)
    x, s_x = _btc(x, "x")
    do, s_do = _btc(do, "do")
    _, s_dx = _btc(dx, "dx")
    shift_rows, scale_rows = _rows(shift), _rows(scale)
    modulate_layernorm_bwd_kernel[plan.grid](
        x=x, shift=shift_rows, scale=scale_rows, w=_rows(weight) if weight is not None else x, do=do, dx=dx,
        part=part, T=T, C=C, eps=eps, TPP=plan.TPP, **s_x, **s_do, **s_dx,
        s_shift=shift_rows.stride(0), s_scale=scale_rows.stride(0), HAS_W=weight is not None,
        BT=plan.BT, BC=plan.BC, **plan.options,
    )
    grads = [dx, *_reduce_per_sample(part[:2], [shift, scale])]
    return grads + (_reduce_affine(part[2:], weight, bias) if affine else [])


def residual_layernorm_fwd(x, y, weight, bias, keep, eps: float) -> torch.Tensor:
    """x + keep * (LN(y) * weight + bias); weight, bias (C,), keep (B,), each optional."""
    o = _new_tokens(x, _promote(x, y, weight, bias, keep))
    if o.numel() == 0:
        return o
    plan, T, C = _tokens_plan(x)
    x, s_x = _btc(x, "x")
    y, s_y = _btc(y, "y")
    _, s_o = _btc(o, "o")
    k = keep if keep is not None else x
    residual_layernorm_fwd_kernel[plan.grid](
        x=x, y=y, w=_rows(weight) if weight is not None else x, b=_rows(bias) if bias is not None else x,
        keep=k, o=o, T=T, C=C, eps=eps, TPP=plan.TPP, **s_x, **s_y, **s_o, s_keep=k.stride(0),
        HAS_W=weight is not None, HAS_B=bias is not None, HAS_KEEP=keep is not None,
        BT=plan.BT, BC=plan.BC, **plan.options,
    )
    return o


def residual_layernorm_bwd(y, weight, bias, keep, do, eps: float, keep_grad: bool) -> List[torch.Tensor]:
    """[dy] + [dweight] if weight + [dbias] if bias + [dkeep] if keep_grad (dx is do itself)."""
    keep_grad = keep_grad and keep is not None
    dy = _new_tokens(y, y.dtype)
    wanted = [t for t in (weight, bias) if t is not None] + ([keep] if keep_grad else [])
    if dy.numel() == 0:
        return [dy, *map(torch.zeros_like, wanted)]
    plan, T, C = _tokens_plan(y)
    B, P = plan.grid
    part = torch.empty((2, B, P, C), dtype=torch.float32, device=y.device)
    part_keep = torch.empty((1, B, P, 1), dtype=torch.float32, device=y.device) if keep_grad else part
    y, s_y = _btc(y, "y")
    do, s_do = _btc(do, "do")
    _, s_dy = _btc(dy, "dy")
    k = keep if keep is not None else y
    residual_layernorm_bwd_kernel[plan.grid](
        y=y, w=_rows(weight) if weight is not None else y, b=_rows(bias) if bias is not None else y, keep=k,
        do=do, dy=dy, part=part, part_keep=part_keep, T=T, C=C, eps=eps, TPP=plan.TPP, **s_y, **s_do, **s_dy,
        s_keep=k.stride(0), HAS_W=weight is not None, HAS_B=bias is not None, HAS_KEEP=keep is not None,
        KEEP_GRAD=keep_grad, BT=plan.BT, BC=plan.BC, **plan.options,
    )
    grads = [dy] + (_reduce_affine(part, weight, bias) if weight is not None or bias is not None else [])
    if keep_grad:
        dkeep = torch.empty((B, 1), dtype=keep.dtype, device=keep.device)
        _sum_partials(part_keep, [dkeep])
        grads.append(dkeep.view(B))
    return grads


# custom ops: opaque to torch.compile, with fake (meta) implementations for tracing; each forward
# op's autograd formula calls its backward op

_NS = "xswin_fast"
Tensor = torch.Tensor


def _as(grad: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return grad if grad.dtype == dtype else grad.to(dtype)


def _needed(ctx, grads) -> tuple:
    return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad))


@torch.library.custom_op(f"{_NS}::modulate_fwd", mutates_args=())
def _modulate_fwd_op(x: Tensor, shift: Tensor, scale: Tensor, eps: float, norm: bool) -> Tensor:
    return modulate_fwd(x, shift, scale, eps, norm)


@_modulate_fwd_op.register_fake
def _(x, shift, scale, eps, norm):
    return _new_tokens(x, _promote(x, shift, scale))


@torch.library.custom_op(f"{_NS}::modulate_bwd", mutates_args=())
def _modulate_bwd_op(x: Tensor, shift: Tensor, scale: Tensor, do: Tensor, eps: float, norm: bool) -> List[Tensor]:
    return modulate_bwd(x, shift, scale, do, eps, norm)


@_modulate_bwd_op.register_fake
def _(x, shift, scale, do, eps, norm):
    return [_new_tokens(x, x.dtype), torch.empty_like(shift), torch.empty_like(scale)]


def _modulate_setup(ctx, inputs, output) -> None:
    x, shift, scale, ctx.eps, ctx.norm = inputs
    ctx.save_for_backward(x, shift, scale)


def _modulate_backward(ctx, do):
    x, shift, scale = ctx.saved_tensors
    return _needed(ctx, _modulate_bwd_op(x, shift, scale, do, ctx.eps, ctx.norm)) + (None, None)


_modulate_fwd_op.register_autograd(_modulate_backward, setup_context=_modulate_setup)


@torch.library.custom_op(f"{_NS}::gated_residual_fwd", mutates_args=())
def _gated_residual_fwd_op(x: Tensor, y: Tensor, gate: Tensor) -> Tensor:
    return gated_residual_fwd(x, y, gate)


@_gated_residual_fwd_op.register_fake
def _(x, y, gate):
    return _new_tokens(x, _promote(x, y, gate))


@torch.library.custom_op(f"{_NS}::gated_residual_bwd", mutates_args=())
def _gated_residual_bwd_op(y: Tensor, gate: Tensor, do: Tensor) -> List[Tensor]:
    return gated_residual_bwd(y, gate, do)


@_gated_residual_bwd_op.register_fake
def _(y, gate, do):
    return [_new_tokens(y, y.dtype), torch.empty_like(gate)]


def _gated_residual_setup(ctx, inputs, output) -> None:
    x, y, gate = inputs
    ctx.save_for_backward(y, gate)
    ctx.x_dtype = x.dtype


def _gated_residual_backward(ctx, do):
    y, gate = ctx.saved_tensors
    dy, dgate = _gated_residual_bwd_op(y, gate, do)
    return _needed(ctx, (_as(do, ctx.x_dtype), dy, dgate))


_gated_residual_fwd_op.register_autograd(_gated_residual_backward, setup_context=_gated_residual_setup)


@torch.library.custom_op(f"{_NS}::modulate_layernorm_fwd", mutates_args=())
def _modulate_layernorm_fwd_op(
    x: Tensor, shift: Tensor, scale: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], eps: float
) -> Tensor:
    return modulate_layernorm_fwd(x, shift, scale, weight, bias, eps)


@_modulate_layernorm_fwd_op.register_fake
def _(x, shift, scale, weight, bias, eps):
    return _new_tokens(x, _promote(x, shift, scale, weight, bias))


@torch.library.custom_op(f"{_NS}::modulate_layernorm_bwd", mutates_args=())
def _modulate_layernorm_bwd_op(
    x: Tensor, shift: Tensor, scale: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], do: Tensor, eps: float
) -> List[Tensor]:
    return modulate_layernorm_bwd(x, shift, scale, weight, bias, do, eps)


@_modulate_layernorm_bwd_op.register_fake
def _(x, shift, scale, weight, bias, do, eps):
    affine = [torch.empty_like(t) for t in (weight, bias) if t is not None]
    return [_new_tokens(x, x.dtype), torch.empty_like(shift), torch.empty_like(scale), *affine]


def _modulate_layernorm_setup(ctx, inputs, output) -> None:
    x, shift, scale, weight, bias, ctx.eps = inputs
    ctx.save_for_backward(x, shift, scale, weight, bias)


def _modulate_layernorm_backward(ctx, do):
    x, shift, scale, weight, bias = ctx.saved_tensors
    grads = iter(_modulate_layernorm_bwd_op(x, shift, scale, weight, bias, do, ctx.eps))
    dx, dshift, dscale = next(grads), next(grads), next(grads)
    dweight = next(grads) if weight is not None else None
    dbias = next(grads) if bias is not None else None
    return _needed(ctx, (dx, dshift, dscale, dweight, dbias)) + (None,)


_modulate_layernorm_fwd_op.register_autograd(_modulate_layernorm_backward, setup_context=_modulate_layernorm_setup)


@torch.library.custom_op(f"{_NS}::residual_layernorm_fwd", mutates_args=())
def _residual_layernorm_fwd_op(
    x: Tensor, y: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], keep: Optional[Tensor], eps: float
) -> Tensor:
    return residual_layernorm_fwd(x, y, weight, bias, keep, eps)


@_residual_layernorm_fwd_op.register_fake
def _(x, y, weight, bias, keep, eps):
    return _new_tokens(x, _promote(x, y, weight, bias, keep))


@torch.library.custom_op(f"{_NS}::residual_layernorm_bwd", mutates_args=())
def _residual_layernorm_bwd_op(
    y: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], keep: Optional[Tensor], do: Tensor, eps: float,
    keep_grad: bool,
) -> List[Tensor]:
    return residual_layernorm_bwd(y, weight, bias, keep, do, eps, keep_grad)


@_residual_layernorm_bwd_op.register_fake
def _(y, weight, bias, keep, do, eps, keep_grad):
    grads = [_new_tokens(y, y.dtype)] + [torch.empty_like(t) for t in (weight, bias) if t is not None]
    if keep_grad and keep is not None:
        grads.append(torch.empty_like(keep))
    return grads


def _residual_layernorm_setup(ctx, inputs, output) -> None:
    x, y, weight, bias, keep, ctx.eps = inputs
    ctx.save_for_backward(y, weight, bias, keep)
    ctx.x_dtype = x.dtype


def _residual_layernorm_backward(ctx, do):
    y, weight, bias, keep = ctx.saved_tensors
    keep_grad = keep is not None and ctx.needs_input_grad[4]
    grads = iter(_residual_layernorm_bwd_op(y, weight, bias, keep, do, ctx.eps, keep_grad))
    dy = next(grads)
    dweight = next(grads) if weight is not None else None
    dbias = next(grads) if bias is not None else None
    dkeep = next(grads) if keep_grad else None
    return _needed(ctx, (_as(do, ctx.x_dtype), dy, dweight, dbias, dkeep)) + (None,)


_residual_layernorm_fwd_op.register_autograd(_residual_layernorm_backward, setup_context=_residual_layernorm_setup)


# entry points: ``unsupported_reason`` and the positional signatures of xswin_fast.ops.reference


def unsupported_reason(x: torch.Tensor, *tensors: Optional[torch.Tensor]) -> Optional[str]:
    """None when the kernels can run for x (B, ..., C) and the op's other tensors on their device,
    else one sentence naming the limit, the architecture and the dtype."""
    arch, dtype = device.arch_name(x.device), x.dtype
    why = device.arch_reason(x.device)
    if why is not None:
        return f"{why} (adaLN, {dtype})"
    for t in (x, *tensors):
        if t is not None and t.dtype not in SUPPORTED_DTYPES:
            return (f"the fused adaLN kernels compute in float32 and support float16, bfloat16 and float32, "
                    f"got {t.dtype} on {arch} (the reference computes float64 in float64)")
    if x.shape[-1] > MAX_CHANNELS:
        return (
            f"the fused adaLN kernels keep whole rows in one tile and support C <= {MAX_CHANNELS} "
            f"channels on {arch} for {dtype}, got C = {x.shape[-1]}"
        )
    return None


def modulate(x, shift, scale):
    return _modulate_fwd_op(x, shift, scale, 0.0, False)


def layernorm_modulate(x, shift, scale, eps=1e-6):
    return _modulate_fwd_op(x, shift, scale, float(eps), True)


def gated_residual(x, y, gate):
    return _gated_residual_fwd_op(x, y, gate)


def modulate_layernorm(x, shift, scale, weight=None, bias=None, eps=1e-5):
    return _modulate_layernorm_fwd_op(x, shift, scale, weight, bias, float(eps))


def residual_layernorm(x, y, weight=None, bias=None, keep=None, eps=1e-5):
    return _residual_layernorm_fwd_op(x, y, weight, bias, keep, float(eps))
