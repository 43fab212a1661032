"""Fused shifted-window self-attention and localized window cross-attention (docs/design.md §3.1),
forward and backward, straight from the (B, H, W, heads, d) layouts.

One kernel family serves Swin's (shifted) window self-attention and XSwin's window
cross-attention (q from the decoder map, k and v from the encoder skip). Nothing is copied
around the kernels: q, k and v are read through their strides (e.g. views of one qkv
projection), the bottom/right padding, the cyclic shift and the window partition are index
arithmetic, and each output token is written once at its original position (a caller-given
``out`` view receives a copy of the result, see ``window_attention``).

Two kernel pairs (``KernelPath``, chosen by the tile plan from the window's token count N):

- DOT (N > 8): tensor-core tiles. A tile is one window, ``N = wh * ww`` tokens laid out in a
  ``BN = next_pow2(N)``-token block. A window is one softmax block: its scores fit one tile,
  so there is no online-softmax rescaling. Windows of more than 64 tokens (up to 16x16) take
  ``NUM_QB`` query blocks of 64 rows against all of their keys.
- SMALL (N <= 8, e.g. the X-Swin paper's 2x2 windows): ``tl.dot`` needs tiles of 16 on a side,
  so a 4-token window there would waste 75% of its scores. Instead each step takes ``WPT``
  whole windows as [WPT, BN, BD] tiles (``BN = next_pow2(N)``) and computes exactly their
  [N, N] scores with CUDA-core products reduced over the channels, one key index at a time.
  At so few keys per query the kernel is bound by memory traffic, not by multiply-adds.

Masks are computed in the kernel from the token coordinates, never loaded: Swin's region mask
(the shifted frame is cut into [0, P-w), [P-w, P-s), [P-s, P) per axis), the padded keys and
the empty slots of a block are excluded exactly (probability 0). Padded queries are computed
against no key and never written. When the map needs no mask (no shift, no padding, a window
filling its block) the kernels are specialised without one; on the DOT path with a shift or
padding, only the windows of the last window rows/columns evaluate it (a runtime branch per
window).

Backward. One program walks a fixed range of tiles (SMALL: steps) per head (``_num_splits``
programs per head), recomputes the scores and the softmax of each window (nothing but q, k, v and do is read; the
softmax statistics are recomputed and delta = rowsum(P * dP) comes from the tile), and writes
dq, dk and dv of its tokens once. The relative-position-bias gradient and the logit-scale
gradient are sums over every window and batch: each program accumulates its share in fp32
registers (fp64 for fp64 inputs) and writes one partial, and the partials are summed by torch
in a fixed order. No atomics: gradients are bitwise reproducible. DOT tiles of 64 tokens with a
bias gradient at d >= 32 (fp16, bf16, fp32) take two such walks (``SPLIT_BACKWARD``,
chosen by ``backward_passes``): a dq pass with the bias partials and a dk/dv pass with the
logit-scale partials, so that neither holds more tiles than fit in 255 registers. Where even
those spill (16-bit cosine tiles at d = 64 on the mma.sync GPUs), ``BLOCKED_BACKWARD`` takes the
dq pass in blocks of 16 query rows, which writes each row's softmax statistics, and the dk/dv
pass in blocks of 32 keys, which reads them.

Isolation. A masked key contributes exactly nothing, forward and backward: probabilities, dp and
ds are selected (``tl.where``), never multiplied by a 0 mask, and no product reduces over the
tokens of two windows (one window per DOT tile; the SMALL path reduces over one window's
queries or keys only), so an Inf or NaN in one window never reaches another.

Layout: the jit kernels live in ``window_attention_fwd`` (with the tile helpers) and
``window_attention_bwd``; this file holds the tile plan -> launchers -> ``torch.library.custom_op``
registration (``xswin_fast::window_attention_fwd`` / ``_bwd``, fake implementations, autograd on
the forward op) -> ``unsupported_reason`` and the entry point ``window_attention`` that
``xswin_fast.ops.window_attention`` calls, as in ``kernels/adaln.py``.
"""
import enum
import functools
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from . import INTERPRET, device
from .window_attention_bwd import SoftmaxStats, window_attention_bwd_kernel, window_attention_small_bwd_kernel
from .window_attention_fwd import (LOG_MAX_LOGIT_SCALE, MaskMode, window_attention_fwd_kernel,
                                   window_attention_small_fwd_kernel)

__all__ = [
    "window_attention",
    "window_attention_fwd",
    "window_attention_bwd",
    "unsupported_reason",
    "MaskMode",
    "TilePlan",
    "BackwardPass",
    "FUSED_BACKWARD",
    "SPLIT_BACKWARD",
    "BLOCKED_BACKWARD",
    "SoftmaxStats",
    "backward_passes",
    "MAX_HEAD_DIM",
    "MAX_WINDOW_TOKENS",
]

MAX_HEAD_DIM = 128
# 16 x 16 windows
MAX_WINDOW_TOKENS = 256
# windows of more tokens than this are split into query blocks of this many rows
MAX_BLOCK_M = 64
# windows of at most this many tokens take the small path (KernelPath.SMALL): tl.dot needs 16
MAX_SMALL_WINDOW_TOKENS = 8
# elements of one [WPT, BN, BD] tile of the small path (WPT windows per step) and its warps:
# small enough that the backward's live [WPT, BN, BN] and [WPT, BN, BD] tiles stay in registers
# (docs/gpu_fitness.md)
SMALL_STEP_ELEMENTS = 1024
SMALL_NUM_WARPS = 4
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# tile plan


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.lru_cache(maxsize=256)
def _first_masked_window(size: int, window: int, shift: int) -> int:
    """Index of the first window along one axis that holds a padded token or a Swin region boundary."""
    padded = _cdiv(size, window) * window
    for f in range(padded):
        if (shift > 0 and f >= padded - window) or (f + shift) % padded >= size:
            return f // window
    return padded // window


class KernelPath(enum.Enum):
    """Which kernel pair a window takes."""

    # tensor-core tiles (tl.dot): one window per tile of BN = max(16, next_pow2(N)) tokens, query
    # blocks of 64 rows from 65 tokens on
    DOT = "dot"
    # windows of at most MAX_SMALL_WINDOW_TOKENS: WPT whole windows per step, their exact [N, N]
    # scores (N padded to a power of two) by CUDA-core products
    SMALL = "small"


class TilePlan(NamedTuple):
    """Tile geometry of one (B, H, W) map, window and head dim, shared by the forward and
    backward launches."""

    path: KernelPath
    num_tiles: int
    num_warps: int
    # software-pipelining depth of the tile loops: 1 = no multi-buffered loads, whose copies of
    # k, v, q and do (3 x 16 KB each for a 64 x 64 fp32 tile) would not fit in shared memory
    num_stages: int
    # runtime ints of the kernels
    H: int
    W: int
    NWH: int
    NWW: int
    NWIN: int
    EDGE_WH: int
    EDGE_WW: int
    # constexprs of the kernels
    WH: int
    WW: int
    SH: int
    SW: int
    N: int
    # windows per step (KernelPath.SMALL; 1 on the DOT path)
    WPT: int
    BM: int
    BN: int
    NUM_QB: int
    MASK_MODE: MaskMode

    def kernel_args(self) -> dict:
        """The plan's keyword arguments of its path's kernels."""
        args = self._asdict()
        unused = ("EDGE_WH", "EDGE_WW", "BM", "NUM_QB") if self.path is KernelPath.SMALL else ("WPT",)
        for name in ("path", "num_tiles", "num_warps", "num_stages") + unused:
            del args[name]
        args["MASK_MODE"] = int(self.MASK_MODE)
        return args

    def score_fraction(self) -> float:
        """The share of the computed (query, key) scores that pair two tokens of one window (the
        rest is tile padding), over the whole launch."""
        computed = self.num_tiles * self.WPT * self.NUM_QB * self.BM * self.BN
        return self.NWIN * self.N * self.N / computed


@functools.lru_cache(maxsize=256)
def _plan(B: int, H: int, W: int, window: Tuple[int, int], shift: Tuple[int, int], d: int) -> TilePlan:
    (wh, ww), (sh, sw) = window, shift
    N = wh * ww
    nwh, nww = _cdiv(H, wh), _cdiv(W, ww)
    padded = (nwh * wh, nww * ww) != (H, W)
    edges = dict(EDGE_WH=_first_masked_window(H, wh, sh), EDGE_WW=_first_masked_window(W, ww, sw))
    geometry = dict(H=H, W=W, NWH=nwh, NWW=nww, NWIN=B * nwh * nww, WH=wh, WW=ww, SH=sh, SW=sw, N=N)
    if N <= MAX_SMALL_WINDOW_TOKENS:
        BN = triton.next_power_of_2(N)
        WPT = max(1, SMALL_STEP_ELEMENTS // (BN * _block_d(d)))
        mask_mode = MaskMode.ALWAYS if padded or sh > 0 or sw > 0 or N < BN else MaskMode.NONE
        return TilePlan(
            path=KernelPath.SMALL, num_tiles=_cdiv(B * nwh * nww, WPT), num_warps=SMALL_NUM_WARPS, num_stages=1,
            **geometry, **edges, WPT=WPT, BM=BN, BN=BN, NUM_QB=1, MASK_MODE=mask_mode,
        )
    BN = triton.next_power_of_2(N)
    BM = min(BN, MAX_BLOCK_M)
    if N < BN:
        mask_mode = MaskMode.ALWAYS
    elif padded or sh > 0 or sw > 0:
        mask_mode = MaskMode.EDGE_WINDOWS
    else:
        mask_mode = MaskMode.NONE
    return TilePlan(
        # 8 warps from 64-token windows on: at 4 a thread would hold 32 fp32 registers per 64 x 64
        # tile, too many for the backward's live tiles
        path=KernelPath.DOT, num_tiles=B * nwh * nww, num_warps=4 if BN < 64 else 8, num_stages=1,
        **geometry, **edges, WPT=1, BM=BM, BN=BN, NUM_QB=_cdiv(N, BM), MASK_MODE=mask_mode,
    )


def _block_d(d: int) -> int:
    """The kernels' channel block BD for head dim d: masked loads pad it to a power of two >= 16."""
    return max(16, triton.next_power_of_2(d))


# launchers


def _precision(q: torch.Tensor) -> dict:
    """Accumulator dtype, dot precision and the interpreter's bf16 upcast for q's dtype."""
    return dict(
        ACC=tl.float64 if q.dtype == torch.float64 else tl.float32,
        UPCAST=INTERPRET and q.dtype == torch.bfloat16,
        # fp32 products follow torch's matmul setting (default: no tf32); 16-bit inputs keep
        # Triton's default (the setting only applies to fp32 operands)
        PREC="ieee" if q.dtype == torch.float64 or (q.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32) else "tf32",
    )


def _strides(name: str, t: torch.Tensor) -> dict:
    """Keyword arguments s_<name>b, s_<name>h, s_<name>w, s_<name>n, s_<name>d: the strides of a
    (B, H, W, heads, d) tensor."""
    return {f"s_{name}{axis}": s for axis, s in zip("bhwnd", t.stride())}


def _bias_args(q: torch.Tensor, bias: Optional[torch.Tensor], logit_scale: Optional[torch.Tensor]) -> dict:
    """Keyword arguments of the bias and logit-scale pointers and the logit scale's stride; an
    absent tensor gets q as a placeholder pointer (never dereferenced). The kernels read the
    bias as a contiguous (heads, N, N) tensor: a strided one (the models pass a permuted view)
    is copied, heads * N * N elements."""
    return dict(
        bias=bias.contiguous() if bias is not None else q, logit_scale=logit_scale if logit_scale is not None else q,
        s_ls=logit_scale.stride(0) if logit_scale is not None else 0,
        COSINE=logit_scale is not None, HAS_BIAS=bias is not None,
    )


def window_attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: Optional[torch.Tensor],
    logit_scale: Optional[torch.Tensor],
    window: Sequence[int],
    shift: Sequence[int],
    scale: float,
) -> torch.Tensor:
    """Forward launch: (B, H, W, heads, d) q, k, v -> (B, H, W, heads*d).

    Inputs are assumed valid (``window_attention`` checks them); ``scale`` is the dot-product
    scale, unused in cosine mode (``logit_scale`` given).
    """
    B, H, W, nh, d = q.shape
    plan = _plan(B, H, W, tuple(window), tuple(shift), d)
    out = torch.empty((B, H, W, nh * d), dtype=q.dtype, device=q.device)
    o = out.unflatten(-1, (nh, d))
    args = dict(q=q, k=k, v=v, o=o, **_bias_args(q, bias, logit_scale),
                **_strides("q", q), **_strides("k", k), **_strides("v", v), **_strides("o", o),
                scale=float(scale), D=d, BD=_block_d(d), **plan.kernel_args(),
                num_warps=plan.num_warps, num_stages=plan.num_stages)
    if plan.path is KernelPath.SMALL:
        window_attention_small_fwd_kernel[(plan.num_tiles, nh)](TILES=1, ACC=_precision(q)["ACC"], **args)
        return out
    tiles = max(1, 64 // plan.BN)
    window_attention_fwd_kernel[(_cdiv(plan.num_tiles, tiles), nh)](TILES=tiles, **_precision(q), **_register_cap(q), **args)
    return out


def _num_splits(dev: torch.device, num_tiles: int, heads: int) -> int:
    """Backward programs per head: enough to fill the device, few enough that each walks several
    windows and the bias-gradient partials stay small. A function of the device and the shapes
    only, so the reduction order (and the gradients' bits) is fixed."""
    sms = device.multiprocessors(dev)
    target = 4 * sms if sms is not None else 8
    return max(1, min(num_tiles, target // heads))


class BackwardPass(NamedTuple):
    """What one launch of the backward kernel writes: dq (``dq``), dk and dv (``dkv``), the bias
    partials (``dbias``, with dq) and the logit-scale partials (``dtemp``), and how it blocks a
    64-token tile."""

    dq: bool
    dkv: bool
    dbias: bool
    dtemp: bool
    # programs per range of tiles, each taking one block of BN / query_groups query rows
    query_groups: int = 1
    # blocks a tile's keys are taken in (one [BM, BN / key_blocks] tile of scores at a time)
    key_blocks: int = 1
    stats: SoftmaxStats = SoftmaxStats.NONE

    @property
    def blocked(self) -> bool:
        """Whether the pass takes a tile's queries or keys in blocks (one 64-token tile only)."""
        return self.query_groups > 1 or self.key_blocks > 1


FUSED_BACKWARD = (BackwardPass(dq=True, dkv=True, dbias=True, dtemp=True),)
# two walks over the tiles, each recomputing the scores, probabilities and ds
SPLIT_BACKWARD = (BackwardPass(dq=True, dkv=False, dbias=True, dtemp=False),
                  BackwardPass(dq=False, dkv=True, dbias=False, dtemp=True))
# the split with smaller tiles: the dq pass in blocks of 16 query rows (4 programs per range of
# tiles, launched side by side so that they share the tiles' k and v in L2), writing each row's
# softmax statistics, with the logit-scale partials (their sum cancels over each row: it needs the
# p that delta was taken from); the dk/dv pass in two blocks of 32 keys, from those statistics
BLOCKED_BACKWARD = (
    BackwardPass(dq=True, dkv=False, dbias=True, dtemp=True, query_groups=4, stats=SoftmaxStats.WRITE),
    BackwardPass(dq=False, dkv=True, dbias=False, dtemp=False, key_blocks=2, stats=SoftmaxStats.READ),
)


def backward_passes(plan: TilePlan, d: int, dtype: torch.dtype, need_dbias: bool, cosine: bool = False,
                    arch: Optional[device.Architecture] = None) -> Tuple[BackwardPass, ...]:
    """The backward launches for this plan at head dim ``d`` and input ``dtype``, with or without a
    bias gradient, in cosine mode or not, on architecture ``arch`` (None: one without ``warp_mma``)."""
    # A [64, 64] fp32 tile of scores takes 32 registers per thread: one pass over 64-token tiles
    # that also holds the bias-gradient accumulator and the dk, dv and dq tiles does not fit in
    # 255 registers from d = 32 on, each half of the split does (docs/gpu_fitness.md). Where the
    # warps hold their tensor-core fragments (mma.sync), the 16-bit cosine halves still spill above
    # ``split_cosine_max_d``, and on sm_120 the one-pass backward at d = 64: there the blocked split
    # takes half- and quarter-size tiles. On sm_100a a one-pass backward over 256-key tiles
    # overflows tensor memory: the split.
    if plan.path is KernelPath.SMALL or dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return FUSED_BACKWARD
    half = dtype != torch.float32 and arch is not None
    one_tile = half and plan.BN == 64
    blocked_cosine = one_tile and cosine and arch.warp_mma and _block_d(d) > arch.split_cosine_max_d
    if need_dbias and plan.BN >= 64 and _block_d(d) >= 32:
        return BLOCKED_BACKWARD if blocked_cosine else SPLIT_BACKWARD
    if blocked_cosine or one_tile and _block_d(d) > arch.fused_bwd_max_d:
        return BLOCKED_BACKWARD
    if half and plan.BN > arch.fused_bwd_max_keys:
        return SPLIT_BACKWARD
    return FUSED_BACKWARD


def window_attention_bwd(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: Optional[torch.Tensor],
    logit_scale: Optional[torch.Tensor],
    window: Sequence[int],
    shift: Sequence[int],
    scale: float,
    need_dbias: bool,
    need_dlogit_scale: bool,
    num_splits: Optional[int] = None,
    passes: Optional[Sequence[BackwardPass]] = None,
    num_stages: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward launches: dq, dk, dv (contiguous (B, H, W, heads, d)), dbias (heads, N, N) and
    dlogit_scale (heads,); the last two are empty tensors when not requested.

    ``num_splits`` (programs per head, per query group) and ``passes`` (``FUSED_BACKWARD``,
    ``SPLIT_BACKWARD`` or ``BLOCKED_BACKWARD`` (tiles of up to 64 tokens), for the DOT path; the
    SMALL path has one pass) and ``num_stages`` (software-pipelining stages of the tile loop: 2
    double-buffers the next tile's loads in shared memory) override the plan's choices; the
    gradients do not depend on them.
    """
    if num_stages is not None and (isinstance(num_stages, bool) or not isinstance(num_stages, int) or num_stages < 1):
        raise ValueError(f"num_stages: expected a positive int, got {num_stages!r}")
    B, H, W, nh, d = q.shape
    plan = _plan(B, H, W, tuple(window), tuple(shift), d)
    need_dbias = need_dbias and bias is not None
    need_dlogit_scale = need_dlogit_scale and logit_scale is not None
    dq, dk, dv = (torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(3))
    splits = num_splits or _num_splits(q.device, plan.num_tiles, nh)
    tiles = _cdiv(plan.num_tiles, min(splits, plan.num_tiles))
    splits = _cdiv(plan.num_tiles, tiles)
    arch = device.architecture(q.device)
    small = plan.path is KernelPath.SMALL
    passes = (FUSED_BACKWARD if small else passes or backward_passes(plan, d, q.dtype, need_dbias,
                                                                     logit_scale is not None, arch))
    if any(p.blocked for p in passes) and plan.BN != 64:
        raise ValueError(f"passes: the blocked passes take windows of 33 to 64 tokens (one 64-token tile), "
                         f"got {plan.N} tokens")
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    # per-program partial sums: [splits, heads, query rows, keys] and [programs, heads]
    if need_dbias:
        alloc = torch.zeros if plan.NUM_QB > 1 else torch.empty
        dbias_part = alloc((splits, nh, plan.NUM_QB * plan.BM, plan.BN), dtype=acc, device=q.device)
    else:
        dbias_part = q
    programs = splits * max(p.query_groups for p in passes if p.dtemp) if need_dlogit_scale else 0
    dtemp_part = torch.empty((programs, nh), dtype=acc, device=q.device) if need_dlogit_scale else q
    # softmax statistics of the blocked passes: [tiles of every program, heads, (lse, delta), rows]
    stats = (torch.empty((splits * tiles, nh, 2, plan.BN), dtype=acc, device=q.device)
             if any(p.stats is not SoftmaxStats.NONE for p in passes) else q)
    do5 = do.unflatten(-1, (nh, d))
    args = dict(q=q, k=k, v=v, do=do5, dq=dq, dk=dk, dv=dv, **_bias_args(q, bias, logit_scale),
                dbias_part=dbias_part, dtemp_part=dtemp_part, **_strides("q", q), **_strides("k", k),
                **_strides("v", v), **_strides("o", do5), **_strides("g", dq),
                scale=float(scale), D=d, BD=_block_d(d), TILES=tiles, **plan.kernel_args(),
                num_warps=arch.small_bwd_warps if small else plan.num_warps, num_stages=num_stages or plan.num_stages)
    if small:
        window_attention_small_bwd_kernel[(splits, nh)](HAS_DBIAS=need_dbias, HAS_DTEMP=need_dlogit_scale,
                                                   ACC=_precision(q)["ACC"], **args)
    else:
        for p in passes:
            blocking = dict(BM=plan.BN // p.query_groups, NUM_QB=1) if p.query_groups > 1 else {}
            window_attention_bwd_kernel[(splits * p.query_groups, nh)](
                **{**args, **blocking, **_pass_warps(p)}, stats=stats,
                HAS_DBIAS=need_dbias and p.dbias, HAS_DTEMP=need_dlogit_scale and p.dtemp, DQ=p.dq, DKV=p.dkv,
                QG=p.query_groups, KB=p.key_blocks, STATS=int(p.stats), **_precision(q),
                **_register_cap(q, capped=p.blocked or plan.BN > 64),
            )
    dbias = _bias_gradient(dbias_part, plan, bias) if need_dbias else q.new_empty(0)
    dls = _logit_scale_gradient(dtemp_part, logit_scale) if need_dlogit_scale else q.new_empty(0)
    return dq, dk, dv, dbias, dls


def _pass_warps(p: BackwardPass) -> dict:
    """Warps of a blocked dq pass: its [16, 64] tiles fill 4 warps' tensor-core fragments."""
    return dict(num_warps=4) if p.query_groups > 1 else {}


def _register_cap(q: torch.Tensor, capped: bool = False) -> dict:
    """Launch options of the tensor-core kernels: an explicit 255-register cap for fp32, whose
    IEEE products keep more live values than ptxas's default budget holds without collapsing to
    32 registers and heavy spill, and where ``capped``: the blocked passes (for some of whose
    4-warp configurations ptxas picks 128 registers and spills) and tiles of over 64 keys (the
    one-pass 16-bit backward of 12x12 and 16x16 windows collapses like fp32 on sm_80;
    docs/gpu_fitness.md)."""
    return dict(maxnreg=255) if q.dtype == torch.float32 or capped else {}


def _bias_gradient(dbias_part: torch.Tensor, plan: TilePlan, bias: torch.Tensor) -> torch.Tensor:
    """(heads, N, N) dbias from the programs' [splits, heads, rows, BN] partials: the second stage
    of the deterministic reduction, a fixed-order sum over the programs."""
    N = plan.N
    return dbias_part.sum(0)[:, :N, :N].to(bias.dtype).contiguous()


def _logit_scale_gradient(dtemp_part: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """(heads,) dlogit_scale from the programs' [splits, heads] partials of dL/dtau (fixed-order
    sum), through tau = exp(min(logit_scale, log 100))."""
    ls = logit_scale.to(dtemp_part.dtype)
    dls = dtemp_part.sum(0) * torch.exp(ls.clamp(max=LOG_MAX_LOGIT_SCALE)) * (ls <= LOG_MAX_LOGIT_SCALE)
    return dls.to(logit_scale.dtype)


# custom ops: opaque to torch.compile, with fake implementations; the forward op's autograd
# formula calls the backward op


@torch.library.custom_op("xswin_fast::window_attention_fwd", mutates_args=())
def _window_attention_fwd_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: Optional[torch.Tensor],
    logit_scale: Optional[torch.Tensor],
    window: List[int],
    shift: List[int],
    scale: float,
) -> torch.Tensor:
    return window_attention_fwd(q, k, v, bias, logit_scale, window, shift, scale)


@_window_attention_fwd_op.register_fake
def _(q, k, v, bias, logit_scale, window, shift, scale):
    B, H, W, nh, d = q.shape
    return q.new_empty((B, H, W, nh * d))


@torch.library.custom_op("xswin_fast::window_attention_bwd", mutates_args=())
def _window_attention_bwd_op(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: Optional[torch.Tensor],
    logit_scale: Optional[torch.Tensor],
    window: List[int],
    shift: List[int],
    scale: float,
    need_dbias: bool,
    need_dlogit_scale: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return window_attention_bwd(do, q, k, v, bias, logit_scale, window, shift, scale, need_dbias, need_dlogit_scale)


@_window_attention_bwd_op.register_fake
def _(do, q, k, v, bias, logit_scale, window, shift, scale, need_dbias, need_dlogit_scale):
    dbias = bias.new_empty(bias.shape) if need_dbias and bias is not None else q.new_empty(0)
    dls = logit_scale.new_empty(logit_scale.shape) if need_dlogit_scale and logit_scale is not None else q.new_empty(0)
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape), dbias, dls


def _window_attention_setup(ctx, inputs, output) -> None:
    q, k, v, bias, logit_scale, window, shift, scale = inputs
    ctx.save_for_backward(q, k, v, bias, logit_scale)
    ctx.geometry = (list(window), list(shift), float(scale))


def _window_attention_backward(ctx, do):
    q, k, v, bias, logit_scale = ctx.saved_tensors
    need_dbias = bias is not None and ctx.needs_input_grad[3]
    need_dls = logit_scale is not None and ctx.needs_input_grad[4]
    dq, dk, dv, dbias, dls = _window_attention_bwd_op(do, q, k, v, bias, logit_scale, *ctx.geometry, need_dbias, need_dls)
    return dq, dk, dv, dbias if need_dbias else None, dls if need_dls else None, None, None, None


_window_attention_fwd_op.register_autograd(_window_attention_backward, setup_context=_window_attention_setup)


# entry points: ``unsupported_reason`` and ``window_attention``


def _shared_memory(plan: TilePlan, d: int, itemsize: int, backward: bool) -> int:
    """Estimated shared memory (bytes) of one program: the staging of the [BN, BD] key and value
    tiles and of the fp32 [BM, BN] score tiles for the dots, per key token of the tile. Fitted to
    the sm_90a / sm_80 compiles at num_stages=1 (docs/window_attention.md), linear in BD for a
    256-token tile, with a 10% margin; it over-estimates tiles of up to 64 tokens, which all fit."""
    BD = _block_d(d)
    per_key = (13 * BD * itemsize) // 4 + 320 if backward else 2 * BD * itemsize + 256
    return int(1.1 * plan.BN * per_key)


def unsupported_reason(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window_size: Sequence[int],
    shift_size: Sequence[int] = (0, 0),
    bias: Optional[torch.Tensor] = None,
    logit_scale: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
) -> Optional[str]:
    """None when the kernels can run for these (valid) inputs on their device, else one sentence
    naming the limit, the architecture and the dtype."""
    B, H, W, nh, d = q.shape
    (wh, ww), arch = window_size, device.arch_name(q.device)
    why = device.arch_reason(q.device)
    if why is not None:
        return f"{why} (window attention, {q.dtype})"
    if q.dtype not in SUPPORTED_DTYPES:
        return f"the Triton window attention supports float16, bfloat16, float32 and float64, got q of dtype {q.dtype} on {arch}"
    if d > MAX_HEAD_DIM:
        return (
            f"head dim d = {d} of q (B, H, W, heads, d) = {tuple(q.shape)} exceeds the Triton kernel's "
            f"limit of {MAX_HEAD_DIM} on {arch} for {q.dtype}; use backend='torch'"
        )
    if wh * ww > MAX_WINDOW_TOKENS:
        return (
            f"window_size {(wh, ww)} has {wh * ww} tokens; the Triton kernel supports at most "
            f"{MAX_WINDOW_TOKENS} (e.g. 16x16) on {arch} for {q.dtype}; use backend='torch'"
        )
    if B * _cdiv(H, wh) * wh * _cdiv(W, ww) * ww >= 2**31:
        return f"q of shape {tuple(q.shape)} has too many (padded) tokens for the kernel's int32 window indices ({arch}, {q.dtype})"
    plan, limit = _plan(B, H, W, (wh, ww), tuple(shift_size), d), device.shared_memory_per_block(q.device)
    backward = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, bias, logit_scale))
    for name, needed in (("forward", False), ("backward", True)):
        smem = _shared_memory(plan, d, q.element_size(), needed)
        if (backward or not needed) and smem > limit:
            return (
                f"the {name} kernel for a {wh}x{ww} window at head dim {d} needs about {smem // 1024} KB of "
                f"shared memory per block, over the {limit // 1024} KB of {arch}, for {q.dtype}; use backend='torch'"
            )
    return None


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
) -> torch.Tensor:
    """The Triton implementation of ``xswin_fast.ops.window_attention`` (same arguments and result).

    Differentiable in q, k, v, bias and logit_scale: the custom op
    ``torch.ops.xswin_fast.window_attention_fwd`` (opaque to ``torch.compile``). With ``out`` its result
    is copied into that view (autograd and ``torch.compile`` see an ordinary ``copy_``) and ``out``
    is returned. The inputs must be valid and within ``unsupported_reason``'s limits (the
    dispatcher of ``xswin_fast.ops`` checks both before calling).
    """
    window, shift = [int(w) for w in window_size], [int(s) for s in shift_size]
    if logit_scale is not None:
        scale = 1.0
    elif scale is None:
        scale = q.shape[-1] ** -0.5
    o = _window_attention_fwd_op(q, k, v, bias, logit_scale, window, shift, float(scale))
    return o if out is None else out.copy_(o)
