"""Fused shifted-window self-attention and localized window cross-attention (docs/design.md §3.1),
forward and backward, straight from the (B, H, W, heads, d) layouts.

One kernel family serves Swin's (shifted) window self-attention and XSwin's window
cross-attention (q from the decoder map, k and v from the encoder skip). Nothing is copied
around the kernels: q, k and v are read through their strides (e.g. views of one qkv
projection), the bottom/right padding, the cyclic shift and the window partition are index
arithmetic, and each output token is written at its original position, into a caller-given
strided ``out`` if there is one.

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
logit-scale partials, so that neither holds more tiles than fit in 255 registers on sm_90a.

Isolation. A masked key contributes exactly nothing, forward and backward: probabilities, dp and
ds are selected (``tl.where``), never multiplied by a 0 mask, and no product reduces over the
tokens of two windows (one window per DOT tile; the SMALL path reduces over one window's
queries or keys only), so an Inf or NaN in one window never reaches another.

Layout of this file: jit kernels -> tile plan -> launchers -> ``torch.library.custom_op``
registration (fake, and autograd on the forward op) -> ``unsupported_reason`` and the entry
point ``window_attention`` that ``xswin_fast.ops.window_attention`` calls.
"""
import enum
import functools
import math
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from . import INTERPRET, device

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
# elements of one [WPT, BN, BD] tile of the small path (WPT windows per step) and its warps.
# Measured on sm_90a (docs/gpu_fitness.md): at 2048 the backward of 2x4 windows took 255
# registers and spilled up to 188 B; at 1024, 8 fp32 registers a thread per tile, no spill.
SMALL_STEP_ELEMENTS = 1024
SMALL_NUM_WARPS = 4
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
LOG_MAX_LOGIT_SCALE = math.log(100.0)
# kernel constants: the logit-scale clamp, log2(e) for exp2 softmax, F.normalize's eps
_LOG_MAX: tl.constexpr = tl.constexpr(LOG_MAX_LOGIT_SCALE)
_LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)
_EPS: tl.constexpr = tl.constexpr(1e-12)


class MaskMode(enum.IntEnum):
    """Which windows of a launch evaluate the attention mask (the ``MASK_MODE`` constexpr)."""

    # no shift, no padding, one full window per tile: compiled without mask code
    NONE = 0
    # a shift or padding, one window per tile: only windows from EDGE_WH / EDGE_WW on
    EDGE_WINDOWS = 1
    # partially filled blocks (N < BN), or any window of the SMALL path with a shift or padding:
    # every window
    ALWAYS = 2


_MASK_EDGE_WINDOWS: tl.constexpr = tl.constexpr(int(MaskMode.EDGE_WINDOWS))
_MASK_ALWAYS: tl.constexpr = tl.constexpr(int(MaskMode.ALWAYS))


@triton.jit
def _dot(a, b, ACC: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr):
    # the interpreter multiplies bf16 bit patterns as integers: upcast there (never on a GPU)
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=PREC, out_dtype=ACC)
    return tl.dot(a, b, input_precision=PREC, out_dtype=ACC)


@triton.jit
def _window_tokens(o_win, o_n, H, W, NWH, NWW, NWIN,
                   WH: tl.constexpr, WW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, N: tl.constexpr):
    # token o_n of window o_win (tensors of one shape, or a scalar and a tensor): (b, row, col) of
    # the map, Swin region, and whether it is a real token (a window of the map, an index inside
    # the window, not bottom/right padding)
    m_t = (o_win < NWIN) & (o_n < N)
    o_b = o_win // (NWH * NWW)
    o_wh = (o_win % (NWH * NWW)) // NWW
    o_ww = o_win % NWW
    # shifted-frame position, then the padded-map position it holds: ((f + s) mod P)
    o_fh = o_wh * WH + o_n // WW
    o_fw = o_ww * WW + o_n % WW
    o_h = (o_fh + SH) % (NWH * WH)
    o_w = (o_fw + SW) % (NWW * WW)
    m_t = m_t & (o_h < H) & (o_w < W)
    # Swin region along each axis: [0, P-w) -> 0, [P-w, P-s) -> 1, [P-s, P) -> 2
    o_rh = tl.where(o_fh >= NWH * WH - WH, tl.where(o_fh >= NWH * WH - SH, 2, 1), 0)
    o_rw = tl.where(o_fw >= NWW * WW - WW, tl.where(o_fw >= NWW * WW - SW, 2, 1), 0)
    return o_b, o_h, o_w, o_rh * 3 + o_rw, m_t


@triton.jit
def _tokens(i_tile, o_t, H, W, NWH, NWW, NWIN,
            WH: tl.constexpr, WW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, N: tl.constexpr):
    # token o_t of tile i_tile (one window per tile): (b, row, col), its index into the [N, N]
    # bias (in bounds even for the tile's empty slots o_t >= N), Swin region, real token
    o_b, o_h, o_w, o_r, m_t = _window_tokens(i_tile, o_t, H, W, NWH, NWW, NWIN, WH, WW, SH, SW, N)
    return o_b, o_h, o_w, o_t % N, o_r, m_t


@triton.jit
def _offsets(o_b, o_h, o_w, s_b, s_h, s_w):
    # int64: a large batch of large maps cannot overflow
    return o_b.to(tl.int64) * s_b + o_h.to(tl.int64) * s_h + o_w.to(tl.int64) * s_w


@triton.jit
def _channels(i_hd, o_d, s_n, s_d):
    # [BD] int64 offsets of head i_hd's channels
    return i_hd.to(tl.int64) * s_n + o_d.to(tl.int64) * s_d


@triton.jit
def _allowed(m_q, m_k, o_qr, o_kr, SHIFTED: tl.constexpr):
    # [BM, BN] pairs a query may attend to: real tokens of one Swin region
    m_a = m_q[:, None] & m_k[None, :]
    if SHIFTED:
        m_a = m_a & (o_qr[:, None] == o_kr[None, :])
    return m_a


@triton.jit
def _temperature(logit_scale, i_hd, s_ls, scale, COSINE: tl.constexpr, ACC: tl.constexpr):
    # head i_hd's score scale: tau = exp(min(logit_scale, log 100)) in cosine mode, else scale
    if COSINE:
        return tl.exp(tl.minimum(tl.load(logit_scale + i_hd * s_ls).to(ACC), _LOG_MAX))
    return scale


@triton.jit
def _scores(b_q, b_k, b_rq, b_rk, bias, o_qn, o_kn, i_tile, b_scale,
            m_q, m_k, o_qr, o_kr, NWH, NWW, EDGE_WH, EDGE_WW,
            N: tl.constexpr, COSINE: tl.constexpr, HAS_BIAS: tl.constexpr,
            MASK_MODE: tl.constexpr, SHIFTED: tl.constexpr,
            ACC: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr):
    # [BM, BN] raw products q.k (cosine: of the L2-normalised q, k)
    b_c = _dot(b_q, tl.trans(b_k), ACC, UPCAST, PREC)
    if COSINE:
        b_c = b_c * b_rq[:, None] * b_rk[None, :]
    # [BM, BN] scores in log2 units, so that the softmax runs on exp2
    b_s = b_c * (b_scale * _LOG2E)
    if HAS_BIAS:
        # this head's contiguous [N, N] bias: with constexpr strides a thread's addresses are one
        # base plus constant offsets, not a hoisted [BM, BN] tile of 64-bit pointers (32 registers
        # a thread on a 64-token tile). o_qn, o_kn < N always: in bounds without a mask.
        b_s += tl.load(bias + o_qn[:, None] * N + o_kn[None, :]).to(ACC) * _LOG2E
    if MASK_MODE == _MASK_ALWAYS:
        m_a = _allowed(m_q, m_k, o_qr, o_kr, SHIFTED)
        b_s = tl.where(m_a, b_s, float("-inf"))
    elif MASK_MODE == _MASK_EDGE_WINDOWS:
        # one window per tile: only windows of the last rows/columns need the mask
        i_w = i_tile % (NWH * NWW)
        if (i_w // NWW >= EDGE_WH) | (i_w % NWW >= EDGE_WW):
            b_s = tl.where(_allowed(m_q, m_k, o_qr, o_kr, SHIFTED), b_s, float("-inf"))
    # [BM, BN] probabilities; a row without any allowed key (padded queries) becomes 0
    b_m = tl.max(b_s, 1)
    b_m = tl.where(b_m == float("-inf"), 0.0, b_m)
    b_p = tl.exp2(b_s - b_m[:, None])
    b_l = tl.sum(b_p, 1)
    b_l = tl.where(b_l == 0.0, 1.0, b_l)
    b_p = b_p / b_l[:, None]
    if MASK_MODE == _MASK_ALWAYS:
        # exactly 0 even in a row made NaN by its own window's Inf/NaN: it must not reach others
        b_p = tl.where(m_a, b_p, 0.0)
    return b_c, b_p


@triton.jit(do_not_specialize=["NWIN"])
def window_attn_fwd_kernel(
    q, k, v, o, bias, logit_scale,
    s_qb, s_qh, s_qw, s_qn, s_qd,
    s_kb, s_kh, s_kw, s_kn, s_kd,
    s_vb, s_vh, s_vw, s_vn, s_vd,
    s_ob, s_oh, s_ow, s_on, s_od,
    s_ls,
    H, W, NWH, NWW, NWIN, EDGE_WH, EDGE_WW, TILES, scale,
    D: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    N: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
    NUM_QB: tl.constexpr, MASK_MODE: tl.constexpr,
    COSINE: tl.constexpr, HAS_BIAS: tl.constexpr,
    ACC: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
):
    i_p, i_hd = tl.program_id(0), tl.program_id(1)
    SHIFTED: tl.constexpr = (SH > 0) | (SW > 0)
    o_d = tl.arange(0, BD)
    m_d = o_d < D
    o_tk = tl.arange(0, BN)
    # [BD]
    o_qd = _channels(i_hd, o_d, s_qn, s_qd)
    o_kd = _channels(i_hd, o_d, s_kn, s_kd)
    o_vd = _channels(i_hd, o_d, s_vn, s_vd)
    o_od = _channels(i_hd, o_d, s_on, s_od)
    b_scale = _temperature(logit_scale, i_hd, s_ls, scale, COSINE, ACC)
    bias += i_hd.to(tl.int64) * (N * N)
    for i_it in range(TILES):
        i_tile = i_p * TILES + i_it
        # [BN] key tokens
        o_kb, o_kh, o_kw, o_kn, o_kr, m_k = _tokens(i_tile, o_tk, H, W, NWH, NWW, NWIN, WH, WW, SH, SW, N)
        m_kd = m_k[:, None] & m_d[None, :]
        # [BN, BD]
        b_k = tl.load(k + _offsets(o_kb, o_kh, o_kw, s_kb, s_kh, s_kw)[:, None] + o_kd[None, :], mask=m_kd, other=0.0)
        b_v = tl.load(v + _offsets(o_kb, o_kh, o_kw, s_vb, s_vh, s_vw)[:, None] + o_vd[None, :], mask=m_kd, other=0.0)
        if COSINE:
            # [BN] 1 / max(|k|, eps)
            b_rk = 1.0 / tl.maximum(tl.sqrt(tl.sum(b_k.to(ACC) * b_k.to(ACC), 1)), _EPS)
        else:
            b_rk = 1.0
        for i_qb in range(NUM_QB):
            # [BM] query tokens
            o_tq = i_qb * BM + tl.arange(0, BM)
            o_qb, o_qh, o_qw, o_qn, o_qr, m_q = _tokens(i_tile, o_tq, H, W, NWH, NWW, NWIN, WH, WW, SH, SW, N)
            m_qd = m_q[:, None] & m_d[None, :]
            # [BM, BD]
            b_q = tl.load(q + _offsets(o_qb, o_qh, o_qw, s_qb, s_qh, s_qw)[:, None] + o_qd[None, :], mask=m_qd, other=0.0)
            if COSINE:
                b_rq = 1.0 / tl.maximum(tl.sqrt(tl.sum(b_q.to(ACC) * b_q.to(ACC), 1)), _EPS)
            else:
                b_rq = 1.0
            # [BM, BN]
            b_c, b_p = _scores(b_q, b_k, b_rq, b_rk, bias, o_qn, o_kn, i_tile, b_scale,
                          m_q, m_k, o_qr, o_kr, NWH, NWW, EDGE_WH, EDGE_WW,
                          N, COSINE, HAS_BIAS, MASK_MODE, SHIFTED, ACC, UPCAST, PREC)
            # [BM, BD]
            b_o = _dot(b_p.to(b_v.dtype), b_v, ACC, UPCAST, PREC)
            p_o = o + _offsets(o_qb, o_qh, o_qw, s_ob, s_oh, s_ow)[:, None] + o_od[None, :]
            tl.store(p_o, b_o.to(o.dtype.element_ty), mask=m_qd)


@triton.jit(do_not_specialize=["NWIN", "TILES"])
def window_attn_bwd_kernel(
    q, k, v, do, dq, dk, dv, bias, logit_scale, dbias_part, dtemp_part,
    s_qb, s_qh, s_qw, s_qn, s_qd,
    s_kb, s_kh, s_kw, s_kn, s_kd,
    s_vb, s_vh, s_vw, s_vn, s_vd,
    s_ob, s_oh, s_ow, s_on, s_od,
    s_gb, s_gh, s_gw, s_gn, s_gd,
    s_ls,
    H, W, NWH, NWW, NWIN, EDGE_WH, EDGE_WW, TILES, scale,
    D: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    N: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
    NUM_QB: tl.constexpr, MASK_MODE: tl.constexpr,
    COSINE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DBIAS: tl.constexpr, HAS_DTEMP: tl.constexpr,
    DQ: tl.constexpr, DKV: tl.constexpr,
    ACC: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
):
    # do has strides s_o*; dq, dk and dv share the strides s_g*. The launch writes dq (DQ) and/or
    # dk and dv (DKV); the bias-gradient partials go with dq, the logit-scale ones with dk and dv.
    i_p, i_hd, n_hd = tl.program_id(0), tl.program_id(1), tl.num_programs(1)
    SHIFTED: tl.constexpr = (SH > 0) | (SW > 0)
    o_d = tl.arange(0, BD)
    m_d = o_d < D
    o_tk = tl.arange(0, BN)
    o_m = tl.arange(0, BM)
    # [BD]
    o_qd = _channels(i_hd, o_d, s_qn, s_qd)
    o_kd = _channels(i_hd, o_d, s_kn, s_kd)
    o_vd = _channels(i_hd, o_d, s_vn, s_vd)
    o_od = _channels(i_hd, o_d, s_on, s_od)
    o_gd = _channels(i_hd, o_d, s_gn, s_gd)
    b_scale = _temperature(logit_scale, i_hd, s_ls, scale, COSINE, ACC)
    bias += i_hd.to(tl.int64) * (N * N)
    # this program's partial sums, written once at the end (fixed order: deterministic)
    p_db = dbias_part + (i_p * n_hd + i_hd).to(tl.int64) * (NUM_QB * BM * BN)
    # [BM, BN]
    b_db = tl.zeros([BM, BN], dtype=ACC)
    # [BM]
    b_dt = tl.zeros([BM], dtype=ACC)
    for i_it in range(TILES):
        i_tile = i_p * TILES + i_it
        # [BN] key tokens
        o_kb, o_kh, o_kw, o_kn, o_kr, m_k = _tokens(i_tile, o_tk, H, W, NWH, NWW, NWIN, WH, WW, SH, SW, N)
        m_kd = m_k[:, None] & m_d[None, :]
        # [BN, BD]
        b_k = tl.load(k + _offsets(o_kb, o_kh, o_kw, s_kb, s_kh, s_kw)[:, None] + o_kd[None, :], mask=m_kd, other=0.0)
        b_v = tl.load(v + _offsets(o_kb, o_kh, o_kw, s_vb, s_vh, s_vw)[:, None] + o_vd[None, :], mask=m_kd, other=0.0)
        if COSINE:
            # [BN] |k| and 1 / max(|k|, eps)
            b_nk = tl.sqrt(tl.sum(b_k.to(ACC) * b_k.to(ACC), 1))
            b_rk = 1.0 / tl.maximum(b_nk, _EPS)
        else:
            b_rk = 1.0
        if DKV:
            # [BN, BD] ds^T q (cosine: ds^T qn) and p^T do, and [BN] colsum(ds * c) (cosine), summed
            # over the query blocks
            b_dk = tl.zeros([BN, BD], dtype=ACC)
            b_dv = tl.zeros([BN, BD], dtype=ACC)
            b_dkn = tl.zeros([BN], dtype=ACC)
        if COSINE:
            b_kn = (b_k.to(ACC) * b_rk[:, None]).to(b_k.dtype)
        for i_qb in range(NUM_QB):
            # [BM] query tokens
            o_tq = i_qb * BM + o_m
            o_qb, o_qh, o_qw, o_qn, o_qr, m_q = _tokens(i_tile, o_tq, H, W, NWH, NWW, NWIN, WH, WW, SH, SW, N)
            m_qd = m_q[:, None] & m_d[None, :]
            # [BM, BD]
            b_q = tl.load(q + _offsets(o_qb, o_qh, o_qw, s_qb, s_qh, s_qw)[:, None] + o_qd[None, :], mask=m_qd, other=0.0)
            b_do = tl.load(do + _offsets(o_qb, o_qh, o_qw, s_ob, s_oh, s_ow)[:, None] + o_od[None, :], mask=m_qd, other=0.0)
            if COSINE:
                b_nq = tl.sqrt(tl.sum(b_q.to(ACC) * b_q.to(ACC), 1))
                b_rq = 1.0 / tl.maximum(b_nq, _EPS)
            else:
                b_rq = 1.0
            # [BM, BN]
            b_c, b_p = _scores(b_q, b_k, b_rq, b_rk, bias, o_qn, o_kn, i_tile, b_scale,
                          m_q, m_k, o_qr, o_kr, NWH, NWW, EDGE_WH, EDGE_WW,
                          N, COSINE, HAS_BIAS, MASK_MODE, SHIFTED, ACC, UPCAST, PREC)
            if DKV:
                b_dv += _dot(tl.trans(b_p.to(b_do.dtype)), b_do, ACC, UPCAST, PREC)
            # [BM, BN] dp, then ds = dL/d(score) with delta = rowsum(p * dp) from the tile
            b_dp = _dot(b_do, tl.trans(b_v), ACC, UPCAST, PREC)
            if MASK_MODE == _MASK_ALWAYS:
                # a masked or foreign key contributes exactly nothing (dp may be Inf there)
                m_a = _allowed(m_q, m_k, o_qr, o_kr, SHIFTED)
                b_dp = tl.where(m_a, b_dp, 0.0)
            b_ds = b_p * (b_dp - tl.sum(b_p * b_dp, 1)[:, None])
            if MASK_MODE == _MASK_ALWAYS:
                b_ds = tl.where(m_a, b_ds, 0.0)
            if COSINE and DKV:
                # [BM, BN] ds * c in fp32: its column sums are the norm term of dk, its row sums the
                # share of dtau (a sum that cancels, ds summing to 0 over each row: 16-bit products
                # of ds would lose it)
                b_dsc = b_ds * b_c
                if MASK_MODE == _MASK_ALWAYS:
                    b_dsc = tl.where(m_a, b_dsc, 0.0)
                b_dkn += tl.sum(b_dsc, 0)
                if HAS_DTEMP:
                    b_dt += tl.sum(b_dsc, 1)
            if HAS_DBIAS:
                if NUM_QB == 1:
                    b_db += b_ds
                else:
                    # query blocks of large windows: read-modify-write of this program's own partial
                    p_dbq = p_db + (i_qb * BM + o_m)[:, None] * BN + o_tk[None, :]
                    tl.store(p_dbq, tl.load(p_dbq) + b_ds)
                    # the next window's read of these addresses must see this write
                    tl.debug_barrier()
            b_dsh = b_ds.to(b_q.dtype)
            if COSINE:
                b_qn = b_q.to(ACC) * b_rq[:, None]
            if DQ:
                if COSINE:
                    # [BM, BD] ds kn. Its dot with qn is rowsum(ds * c) (c = qn . kn), the norm term
                    # of dq: a pass without dk and dv keeps no [BM, BN] tile of c live.
                    b_dq = _dot(b_dsh, b_kn, ACC, UPCAST, PREC)
                    b_dqn = tl.sum(b_qn * b_dq, 1)
                    # dq = tau (ds kn - qn rowsum(ds * c)) / max(|q|, eps); no norm term when clamped
                    b_dq = (b_dq - b_qn * tl.where(b_nq >= _EPS, b_dqn, 0.0)[:, None]) * (b_scale * b_rq)[:, None]
                else:
                    b_dq = _dot(b_dsh, b_k, ACC, UPCAST, PREC) * scale
                p_dq = dq + _offsets(o_qb, o_qh, o_qw, s_gb, s_gh, s_gw)[:, None] + o_gd[None, :]
                tl.store(p_dq, b_dq.to(dq.dtype.element_ty), mask=m_qd)
            if DKV:
                if COSINE:
                    b_dk += _dot(tl.trans(b_dsh), b_qn.to(b_q.dtype), ACC, UPCAST, PREC)
                else:
                    b_dk += _dot(tl.trans(b_dsh), b_q, ACC, UPCAST, PREC) * scale
        if DKV:
            if COSINE:
                # dk = tau (ds^T qn - kn colsum(ds * c)) / max(|k|, eps); no norm term when clamped
                b_dkn = tl.where(b_nk >= _EPS, b_dkn, 0.0)
                b_dk = (b_dk - b_k.to(ACC) * b_rk[:, None] * b_dkn[:, None]) * (b_scale * b_rk)[:, None]
            o_kg = _offsets(o_kb, o_kh, o_kw, s_gb, s_gh, s_gw)[:, None] + o_gd[None, :]
            tl.store(dk + o_kg, b_dk.to(dk.dtype.element_ty), mask=m_kd)
            tl.store(dv + o_kg, b_dv.to(dv.dtype.element_ty), mask=m_kd)
    if HAS_DBIAS:
        if NUM_QB == 1:
            tl.store(p_db + o_m[:, None] * BN + o_tk[None, :], b_db)
    if HAS_DTEMP:
        tl.store(dtemp_part + i_p * n_hd + i_hd, tl.sum(b_dt, 0))


@triton.jit
def _small_bias(bias, i_hd, o_n, N: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr):
    # [BN, BN] head i_hd's contiguous [N, N] bias in log2 units (0 without one or beyond N),
    # loaded once per program
    b_bias = tl.zeros([o_n.shape[0], o_n.shape[0]], dtype=ACC)
    if HAS_BIAS:
        m_nn = (o_n < N)[:, None] & (o_n < N)[None, :]
        b_bias = tl.load(bias + i_hd.to(tl.int64) * (N * N) + o_n[:, None] * N + o_n[None, :], mask=m_nn,
                         other=0.0).to(ACC) * _LOG2E
    return b_bias


@triton.jit
def _small_step(o_win, o_n, H, W, NWH, NWW, NWIN,
                WH: tl.constexpr, WW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, N: tl.constexpr):
    # the tokens of windows o_win [WPT] (queries and keys sit at the same positions): [WPT, BN]
    # (b, row, col) and real-token mask, and the [WPT, BN, BN] allowed (query, key) pairs: real
    # tokens of one Swin region
    o_b, o_h, o_w, o_r, m_t = _window_tokens(o_win[:, None], o_n[None, :], H, W, NWH, NWW, NWIN, WH, WW, SH, SW, N)
    m_a = m_t[:, :, None] & m_t[:, None, :]
    if (SH > 0) | (SW > 0):
        m_a = m_a & (o_r[:, :, None] == o_r[:, None, :])
    return o_b, o_h, o_w, m_t, m_a


@triton.jit
def _small_probs(b_c, b_bias, b_scale, m_a, HAS_BIAS: tl.constexpr, MASK_MODE: tl.constexpr):
    # [WPT, BN, BN] probabilities of the windows' raw products c (query i on axis 1, key j on
    # axis 2); a row without any allowed key (padded queries) becomes 0
    b_s = b_c * (b_scale * _LOG2E)
    if HAS_BIAS:
        b_s += b_bias[None, :, :]
    if MASK_MODE == _MASK_ALWAYS:
        b_s = tl.where(m_a, b_s, float("-inf"))
    b_m = tl.max(b_s, 2)
    b_m = tl.where(b_m == float("-inf"), 0.0, b_m)
    b_p = tl.exp2(b_s - b_m[:, :, None])
    b_l = tl.sum(b_p, 2)
    b_l = tl.where(b_l == 0.0, 1.0, b_l)
    b_p = b_p / b_l[:, :, None]
    if MASK_MODE == _MASK_ALWAYS:
        b_p = tl.where(m_a, b_p, 0.0)
    return b_p


@triton.jit
def _small_key(t, o_win, j: tl.constexpr, o_td, m_d, s_b, s_h, s_w, H, W, NWH, NWW, NWIN,
               WH: tl.constexpr, WW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr, N: tl.constexpr,
               ACC: tl.constexpr):
    # [WPT, BD] token j of each window o_win [WPT] (zero where not a real token), and its offsets
    o_b, o_h, o_w, _, m_j = _window_tokens(o_win, j, H, W, NWH, NWW, NWIN, WH, WW, SH, SW, N)
    o_j = _offsets(o_b, o_h, o_w, s_b, s_h, s_w)[:, None] + o_td[None, :]
    m_jd = m_j[:, None] & m_d[None, :]
    return tl.load(t + o_j, mask=m_jd, other=0.0).to(ACC), o_b, o_h, o_w, m_jd


@triton.jit
def _column(b_x, o_n, j: tl.constexpr):
    # [WPT, BN] column j of a [WPT, BN, BN] tile (a register tile cannot be indexed)
    return tl.sum(tl.where(o_n[None, None, :] == j, b_x, 0.0), 2)


@triton.jit
def _inverse_norm(b_x):
    # [WPT, BN] 1 / max(|x|, eps) over the channels of a [WPT, BN, BD] tile
    return 1.0 / tl.maximum(tl.sqrt(tl.sum(b_x * b_x, 2)), _EPS)


@triton.jit(do_not_specialize=["NWIN"])
def window_attn_small_fwd_kernel(
    q, k, v, o, bias, logit_scale,
    s_qb, s_qh, s_qw, s_qn, s_qd,
    s_kb, s_kh, s_kw, s_kn, s_kd,
    s_vb, s_vh, s_vw, s_vn, s_vd,
    s_ob, s_oh, s_ow, s_on, s_od,
    s_ls,
    H, W, NWH, NWW, NWIN, TILES, scale,
    D: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    N: tl.constexpr, WPT: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, MASK_MODE: tl.constexpr,
    COSINE: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr,
):
    # Windows of at most 8 tokens: each step takes WPT whole windows and computes exactly their
    # [N, N] scores (N padded to BN = next_pow2(N)) with CUDA-core products and reductions over
    # the channels: no tl.dot, so no 16-token tile minimum and no foreign window in a product.
    i_p, i_hd = tl.program_id(0), tl.program_id(1)
    o_d = tl.arange(0, BD)
    m_d = o_d < D
    o_n = tl.arange(0, BN)
    o_qd = _channels(i_hd, o_d, s_qn, s_qd)
    o_kd = _channels(i_hd, o_d, s_kn, s_kd)
    o_vd = _channels(i_hd, o_d, s_vn, s_vd)
    o_od = _channels(i_hd, o_d, s_on, s_od)
    b_scale = _temperature(logit_scale, i_hd, s_ls, scale, COSINE, ACC)
    b_bias = _small_bias(bias, i_hd, o_n, N, HAS_BIAS, ACC)
    for i_it in range(TILES):
        # [WPT] windows of this step, [WPT, BN] their tokens, [WPT, BN, BN] allowed pairs
        o_win = (i_p * TILES + i_it) * WPT + tl.arange(0, WPT)
        o_tb, o_th, o_tw, m_t, m_a = _small_step(o_win, o_n, H, W, NWH, NWW, NWIN, WH, WW, SH, SW, N)
        m_td = m_t[:, :, None] & m_d[None, None, :]
        # [WPT, BN, BD]
        p_q = q + _offsets(o_tb, o_th, o_tw, s_qb, s_qh, s_qw)[:, :, None] + o_qd[None, None, :]
        b_q = tl.load(p_q, mask=m_td, other=0.0).to(ACC)
        if COSINE:
            b_q = b_q * _inverse_norm(b_q)[:, :, None]
        # [WPT, BN, BN] q.k, key j's products written into column j
        b_c = tl.zeros([WPT, BN, BN], dtype=ACC)
        for j in tl.static_range(N):
            b_kj, _, _, _, _ = _small_key(k, o_win, j, o_kd, m_d, s_kb, s_kh, s_kw, H, W, NWH, NWW, NWIN,
                                          WH, WW, SH, SW, N, ACC)
            if COSINE:
                b_kj = b_kj * (1.0 / tl.maximum(tl.sqrt(tl.sum(b_kj * b_kj, 1)), _EPS))[:, None]
            b_cj = tl.sum(b_q * b_kj[:, None, :], 2)
            b_c = tl.where(o_n[None, None, :] == j, b_cj[:, :, None], b_c)
        b_p = _small_probs(b_c, b_bias, b_scale, m_a, HAS_BIAS, MASK_MODE)
        # [WPT, BN, BD] sum over keys j of p_j v_j
        b_o = tl.zeros([WPT, BN, BD], dtype=ACC)
        for j in tl.static_range(N):
            b_vj, _, _, _, _ = _small_key(v, o_win, j, o_vd, m_d, s_vb, s_vh, s_vw, H, W, NWH, NWW, NWIN,
                                          WH, WW, SH, SW, N, ACC)
            b_o += _column(b_p, o_n, j)[:, :, None] * b_vj[:, None, :]
        p_o = o + _offsets(o_tb, o_th, o_tw, s_ob, s_oh, s_ow)[:, :, None] + o_od[None, None, :]
        tl.store(p_o, b_o.to(o.dtype.element_ty), mask=m_td)


@triton.jit(do_not_specialize=["NWH", "NWW", "NWIN", "TILES"])
def window_attn_small_bwd_kernel(
    q, k, v, do, dq, dk, dv, bias, logit_scale, dbias_part, dtemp_part,
    s_qb, s_qh, s_qw, s_qn, s_qd,
    s_kb, s_kh, s_kw, s_kn, s_kd,
    s_vb, s_vh, s_vw, s_vn, s_vd,
    s_ob, s_oh, s_ow, s_on, s_od,
    s_gb, s_gh, s_gw, s_gn, s_gd,
    s_ls,
    H, W, NWH, NWW, NWIN, TILES, scale,
    D: tl.constexpr, WH: tl.constexpr, WW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    N: tl.constexpr, WPT: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, MASK_MODE: tl.constexpr,
    COSINE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_DBIAS: tl.constexpr, HAS_DTEMP: tl.constexpr,
    ACC: tl.constexpr,
):
    # One walk over TILES steps of WPT whole windows: every gradient of a window comes from its
    # own step (do has strides s_o*; dq, dk and dv share s_g*). The bias- and logit-scale
    # gradients are this program's partial sums, written once at the end (fixed order).
    i_p, i_hd, n_hd = tl.program_id(0), tl.program_id(1), tl.num_programs(1)
    o_d = tl.arange(0, BD)
    m_d = o_d < D
    o_n = tl.arange(0, BN)
    o_qd = _channels(i_hd, o_d, s_qn, s_qd)
    o_kd = _channels(i_hd, o_d, s_kn, s_kd)
    o_vd = _channels(i_hd, o_d, s_vn, s_vd)
    o_od = _channels(i_hd, o_d, s_on, s_od)
    o_gd = _channels(i_hd, o_d, s_gn, s_gd)
    b_scale = _temperature(logit_scale, i_hd, s_ls, scale, COSINE, ACC)
    b_bias = _small_bias(bias, i_hd, o_n, N, HAS_BIAS, ACC)
    # [BN, BN] and [WPT, BN] partial sums of dbias and dtau
    b_db = tl.zeros([BN, BN], dtype=ACC)
    b_dt = tl.zeros([WPT, BN], dtype=ACC)
    for i_it in range(TILES):
        # [WPT] windows of this step, [WPT, BN] their tokens, [WPT, BN, BN] allowed pairs
        o_win = (i_p * TILES + i_it) * WPT + tl.arange(0, WPT)
        o_tb, o_th, o_tw, m_t, m_a = _small_step(o_win, o_n, H, W, NWH, NWW, NWIN, WH, WW, SH, SW, N)
        m_td = m_t[:, :, None] & m_d[None, None, :]
        # [WPT, BN, BD] q (cosine: q / max(|q|, eps)) and do
        b_q = tl.load(q + _offsets(o_tb, o_th, o_tw, s_qb, s_qh, s_qw)[:, :, None] + o_qd[None, None, :],
                      mask=m_td, other=0.0).to(ACC)
        b_do = tl.load(do + _offsets(o_tb, o_th, o_tw, s_ob, s_oh, s_ow)[:, :, None] + o_od[None, None, :],
                       mask=m_td, other=0.0).to(ACC)
        if COSINE:
            b_nq = tl.sqrt(tl.sum(b_q * b_q, 2))
            b_rq = 1.0 / tl.maximum(b_nq, _EPS)
            b_q = b_q * b_rq[:, :, None]
        # [WPT, BN, BN] c = q.k and dp = do.v, column j from key j
        b_c = tl.zeros([WPT, BN, BN], dtype=ACC)
        b_dp = tl.zeros([WPT, BN, BN], dtype=ACC)
        for j in tl.static_range(N):
            b_kj, _, _, _, _ = _small_key(k, o_win, j, o_kd, m_d, s_kb, s_kh, s_kw, H, W, NWH, NWW, NWIN,
                                          WH, WW, SH, SW, N, ACC)
            b_vj, _, _, _, _ = _small_key(v, o_win, j, o_vd, m_d, s_vb, s_vh, s_vw, H, W, NWH, NWW, NWIN,
                                          WH, WW, SH, SW, N, ACC)
            if COSINE:
                b_kj = b_kj * (1.0 / tl.maximum(tl.sqrt(tl.sum(b_kj * b_kj, 1)), _EPS))[:, None]
            b_c = tl.where(o_n[None, None, :] == j, tl.sum(b_q * b_kj[:, None, :], 2)[:, :, None], b_c)
            b_dp = tl.where(o_n[None, None, :] == j, tl.sum(b_do * b_vj[:, None, :], 2)[:, :, None], b_dp)
        b_p = _small_probs(b_c, b_bias, b_scale, m_a, HAS_BIAS, MASK_MODE)
        if MASK_MODE == _MASK_ALWAYS:
            # a masked key contributes exactly nothing (dp may be Inf there)
            b_dp = tl.where(m_a, b_dp, 0.0)
        # [WPT, BN, BN] ds = dL/d(score), delta = rowsum(p * dp)
        b_ds = b_p * (b_dp - tl.sum(b_p * b_dp, 2)[:, :, None])
        if MASK_MODE == _MASK_ALWAYS:
            b_ds = tl.where(m_a, b_ds, 0.0)
        if HAS_DBIAS:
            b_db += tl.sum(b_ds, 0)
        if COSINE:
            # [WPT, BN, BN] ds * c: its row sums are the norm term of dq and the share of dtau,
            # its column sums the norm term of dk
            b_dsc = b_ds * b_c
            if MASK_MODE == _MASK_ALWAYS:
                b_dsc = tl.where(m_a, b_dsc, 0.0)
            b_dqn = tl.sum(b_dsc, 2)
            if HAS_DTEMP:
                b_dt += b_dqn
        # [WPT, BN, BD] sum over keys j of ds_j k_j (cosine: of the normalised k_j)
        b_dq = tl.zeros([WPT, BN, BD], dtype=ACC)
        for j in tl.static_range(N):
            b_kj, o_jb, o_jh, o_jw, m_jd = _small_key(k, o_win, j, o_kd, m_d, s_kb, s_kh, s_kw, H, W, NWH, NWW,
                                                      NWIN, WH, WW, SH, SW, N, ACC)
            b_dsj = _column(b_ds, o_n, j)
            # [WPT, BD] ds_j^T q and p_j^T do: sums over the window's queries
            b_dkj = tl.sum(b_dsj[:, :, None] * b_q, 1)
            b_dvj = tl.sum(_column(b_p, o_n, j)[:, :, None] * b_do, 1)
            if COSINE:
                b_nkj = tl.sqrt(tl.sum(b_kj * b_kj, 1))
                b_rkj = 1.0 / tl.maximum(b_nkj, _EPS)
                b_kj = b_kj * b_rkj[:, None]
                # dk = tau (ds^T qn - kn colsum(ds * c)) / max(|k|, eps); no norm term when clamped
                b_dknj = tl.where(b_nkj >= _EPS, tl.sum(_column(b_dsc, o_n, j), 1), 0.0)
                b_dkj = (b_dkj - b_kj * b_dknj[:, None]) * (b_scale * b_rkj)[:, None]
            else:
                b_dkj = b_dkj * scale
            b_dq += b_dsj[:, :, None] * b_kj[:, None, :]
            o_jg = _offsets(o_jb, o_jh, o_jw, s_gb, s_gh, s_gw)[:, None] + o_gd[None, :]
            tl.store(dk + o_jg, b_dkj.to(dk.dtype.element_ty), mask=m_jd)
            tl.store(dv + o_jg, b_dvj.to(dv.dtype.element_ty), mask=m_jd)
        if COSINE:
            # dq = tau (ds kn - qn rowsum(ds * c)) / max(|q|, eps); no norm term when clamped
            b_dq = (b_dq - b_q * tl.where(b_nq >= _EPS, b_dqn, 0.0)[:, :, None]) * (b_scale * b_rq)[:, :, None]
        else:
            b_dq = b_dq * scale
        p_dq = dq + _offsets(o_tb, o_th, o_tw, s_gb, s_gh, s_gw)[:, :, None] + o_gd[None, None, :]
        tl.store(p_dq, b_dq.to(dq.dtype.element_ty), mask=m_td)
    if HAS_DBIAS:
        p_db = dbias_part + (i_p * n_hd + i_hd).to(tl.int64) * (BN * BN)
        tl.store(p_db + o_n[:, None] * BN + o_n[None, :], b_db)
    if HAS_DTEMP:
        tl.store(dtemp_part + i_p * n_hd + i_hd, tl.sum(tl.sum(b_dt, 1), 0))


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
        # 8 warps from 64-token windows on: at 4, a thread holds 32 fp32 registers per 64 x 64
        # tile and the backward's live tiles spill
        path=KernelPath.DOT, num_tiles=B * nwh * nww, num_warps=4 if BN < 64 else 8, num_stages=1,
        **geometry, **edges, WPT=1, BM=BM, BN=BN, NUM_QB=_cdiv(N, BM), MASK_MODE=mask_mode,
    )


def _block_d(d: int) -> int:
    """The kernels' channel block BD for head dim d: masked loads pad it to a power of two >= 16."""
    return max(16, triton.next_power_of_2(d))


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
        window_attn_small_fwd_kernel[(plan.num_tiles, nh)](TILES=1, ACC=_precision(q)["ACC"], **args)
        return out
    tiles = max(1, 64 // plan.BN)
    window_attn_fwd_kernel[(_cdiv(plan.num_tiles, tiles), nh)](TILES=tiles, **_precision(q), **_register_cap(q), **args)
    return out


def _num_splits(dev: torch.device, num_tiles: int, heads: int) -> int:
    """Backward programs per head: enough to fill the device, few enough that each walks several
    windows and the bias-gradient partials stay small. A function of the device and the shapes
    only, so the reduction order (and the gradients' bits) is fixed."""
    sms = device.multiprocessors(dev)
    target = 4 * sms if sms is not None else 8
    return max(1, min(num_tiles, target // heads))


class BackwardPass(NamedTuple):
    """What one launch of the backward kernel writes: dq with the bias and logit-scale partials
    (``dq``), dk and dv (``dkv``)."""

    dq: bool
    dkv: bool


FUSED_BACKWARD = (BackwardPass(dq=True, dkv=True),)
# two walks over the tiles, each recomputing the scores, probabilities and ds
SPLIT_BACKWARD = (BackwardPass(dq=True, dkv=False), BackwardPass(dq=False, dkv=True))


def backward_passes(plan: TilePlan, d: int, dtype: torch.dtype, need_dbias: bool) -> Tuple[BackwardPass, ...]:
    """The backward launches for this plan at head dim ``d`` and input ``dtype``, with or without a
    bias gradient."""
    # Measured with the compile check (docs/gpu_fitness.md). On sm_90a a [64, 64] fp32 tile of
    # scores takes 32 registers per thread in every layout Triton gives it; one pass over 64-token
    # tiles that also holds the bias-gradient accumulator and the dk, dv and dq tiles spilled on
    # 16-bit inputs from d = 32 on, while each half of the split fits. fp32 (IEEE products, no
    # tensor cores) spills either way, less split: fused, ptxas fell back to 32 registers and
    # 18 KB of spill at d = 64 and spilled 0.9 KB at d = 32 (split: 128 registers without spill
    # and 255 with 0.3 KB).
    if plan.path is KernelPath.SMALL or dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return FUSED_BACKWARD
    if need_dbias and plan.BN >= 64 and _block_d(d) >= 32:
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
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward launches: dq, dk, dv (contiguous (B, H, W, heads, d)), dbias (heads, N, N) and
    dlogit_scale (heads,); the last two are empty tensors when not requested.

    ``num_splits`` (programs per head) and ``passes`` (``FUSED_BACKWARD`` or ``SPLIT_BACKWARD``, for
    the DOT path; the SMALL path has one pass) override the plan's choices; the gradients do not
    depend on them.
    """
    B, H, W, nh, d = q.shape
    plan = _plan(B, H, W, tuple(window), tuple(shift), d)
    need_dbias = need_dbias and bias is not None
    need_dlogit_scale = need_dlogit_scale and logit_scale is not None
    dq, dk, dv = (torch.empty(q.shape, dtype=q.dtype, device=q.device) for _ in range(3))
    splits = num_splits or _num_splits(q.device, plan.num_tiles, nh)
    tiles = _cdiv(plan.num_tiles, min(splits, plan.num_tiles))
    splits = _cdiv(plan.num_tiles, tiles)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    # per-program partial sums: [splits, heads, query rows, keys] and [splits, heads]
    if need_dbias:
        alloc = torch.zeros if plan.NUM_QB > 1 else torch.empty
        dbias_part = alloc((splits, nh, plan.NUM_QB * plan.BM, plan.BN), dtype=acc, device=q.device)
    else:
        dbias_part = q
    dtemp_part = torch.empty((splits, nh), dtype=acc, device=q.device) if need_dlogit_scale else q
    do5 = do.unflatten(-1, (nh, d))
    args = dict(q=q, k=k, v=v, do=do5, dq=dq, dk=dk, dv=dv, **_bias_args(q, bias, logit_scale),
                dbias_part=dbias_part, dtemp_part=dtemp_part, **_strides("q", q), **_strides("k", k),
                **_strides("v", v), **_strides("o", do5), **_strides("g", dq),
                scale=float(scale), D=d, BD=_block_d(d), TILES=tiles, **plan.kernel_args(),
                num_warps=plan.num_warps, num_stages=plan.num_stages)
    if plan.path is KernelPath.SMALL:
        window_attn_small_bwd_kernel[(splits, nh)](HAS_DBIAS=need_dbias, HAS_DTEMP=need_dlogit_scale,
                                                   ACC=_precision(q)["ACC"], **args)
    else:
        for p in passes or backward_passes(plan, d, q.dtype, need_dbias):
            window_attn_bwd_kernel[(splits, nh)](
                HAS_DBIAS=need_dbias and p.dq, HAS_DTEMP=need_dlogit_scale and p.dkv, DQ=p.dq, DKV=p.dkv,
                **_precision(q), **_register_cap(q), **args,
            )
    dbias = _bias_gradient(dbias_part, plan, bias) if need_dbias else q.new_empty(0)
    dls = _logit_scale_gradient(dtemp_part, logit_scale) if need_dlogit_scale else q.new_empty(0)
    return dq, dk, dv, dbias, dls


def _register_cap(q: torch.Tensor) -> dict:
    """Launch options of the tensor-core kernels: an explicit 255-register cap for fp32. Without
    it ptxas gave one specialisation of XSwin-B/2's fp32 dk/dv pass (d64, IEEE products) 32
    registers and 13 KB of spill on sm_90a (capped: 255 registers, 1.1 KB of spill), and the fp32
    forward of 7x7 and 8x8 windows at d128 32 registers and 8-12 KB of spill."""
    return dict(maxnreg=255) if q.dtype == torch.float32 else {}


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


@torch.library.custom_op("xswin_fast::window_attention", mutates_args=())
def _window_attention_op(
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


@_window_attention_op.register_fake
def _(q, k, v, bias, logit_scale, window, shift, scale):
    B, H, W, nh, d = q.shape
    return q.new_empty((B, H, W, nh * d))


@torch.library.custom_op("xswin_fast::window_attention_backward", mutates_args=())
def _window_attention_backward_op(
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


@_window_attention_backward_op.register_fake
def _(do, q, k, v, bias, logit_scale, window, shift, scale, need_dbias, need_dlogit_scale):
    dbias = bias.new_empty(bias.shape) if need_dbias and bias is not None else q.new_empty(0)
    dls = logit_scale.new_empty(logit_scale.shape) if need_dlogit_scale and logit_scale is not None else q.new_empty(0)
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape), dbias, dls


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, bias, logit_scale, window, shift, scale = inputs
    ctx.save_for_backward(q, k, v, bias, logit_scale)
    ctx.geometry = (list(window), list(shift), float(scale))


def _backward(ctx, do):
    q, k, v, bias, logit_scale = ctx.saved_tensors
    need_dbias = bias is not None and ctx.needs_input_grad[3]
    need_dls = logit_scale is not None and ctx.needs_input_grad[4]
    dq, dk, dv, dbias, dls = _window_attention_backward_op(do, q, k, v, bias, logit_scale, *ctx.geometry, need_dbias, need_dls)
    return dq, dk, dv, dbias if need_dbias else None, dls if need_dls else None, None, None, None


_window_attention_op.register_autograd(_backward, setup_context=_setup_context)


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
    ``torch.ops.xswin_fast.window_attention`` (opaque to ``torch.compile``). With ``out`` its result
    is copied into that view (autograd and ``torch.compile`` see an ordinary ``copy_``) and ``out``
    is returned. The inputs must be valid and within ``unsupported_reason``'s limits (the
    dispatcher of ``xswin_fast.ops`` checks both before calling).
    """
    window, shift = [int(w) for w in window_size], [int(s) for s in shift_size]
    if logit_scale is not None:
        scale = 1.0
    elif scale is None:
        scale = q.shape[-1] ** -0.5
    o = _window_attention_op(q, k, v, bias, logit_scale, window, shift, float(scale))
    return o if out is None else out.copy_(o)
