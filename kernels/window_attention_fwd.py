"""Forward Triton kernels of the window attention (``kernels/window_attention.py`` plans and
launches them), and the tile helpers its backward kernels (``window_attention_bwd``) share: token
coordinates and Swin regions, masks, norms, scores and softmax.

DOT path: ``window_attention_fwd_kernel``, one window per tensor-core tile. SMALL path:
``window_attention_small_fwd_kernel``, WPT whole windows per step with CUDA-core products.
"""
import enum
import math

import triton
import triton.language as tl

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
def _norms(b_x):
    # |x| over the last axis (the channels) of a tile of rank >= 2, and 1 / max(|x|, eps) (F.normalize)
    b_n = tl.sqrt(tl.sum(b_x * b_x, -1))
    return b_n, 1.0 / tl.maximum(b_n, _EPS)


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
def _logits(b_q, b_k, b_rq, b_rk, bias, o_qn, o_kn, i_tile, b_scale,
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
        b_s = tl.where(_allowed(m_q, m_k, o_qr, o_kr, SHIFTED), b_s, float("-inf"))
    elif MASK_MODE == _MASK_EDGE_WINDOWS:
        # one window per tile: only windows of the last rows/columns need the mask
        i_w = i_tile % (NWH * NWW)
        if (i_w // NWW >= EDGE_WH) | (i_w % NWW >= EDGE_WW):
            b_s = tl.where(_allowed(m_q, m_k, o_qr, o_kr, SHIFTED), b_s, float("-inf"))
    return b_c, b_s


@triton.jit
def _scores(b_q, b_k, b_rq, b_rk, bias, o_qn, o_kn, i_tile, b_scale,
            m_q, m_k, o_qr, o_kr, NWH, NWW, EDGE_WH, EDGE_WW,
            N: tl.constexpr, COSINE: tl.constexpr, HAS_BIAS: tl.constexpr,
            MASK_MODE: tl.constexpr, SHIFTED: tl.constexpr,
            ACC: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr):
    # [BM, BN] products c (see _logits) and probabilities over the tile's keys, and [BM] each row's
    # log2-sum-exp2 of the scores (p = exp2(s - lse)); a row without any allowed key (padded
    # queries) has p = 0 and lse = 0
    b_c, b_s = _logits(b_q, b_k, b_rq, b_rk, bias, o_qn, o_kn, i_tile, b_scale,
                       m_q, m_k, o_qr, o_kr, NWH, NWW, EDGE_WH, EDGE_WW,
                       N, COSINE, HAS_BIAS, MASK_MODE, SHIFTED, ACC, UPCAST, PREC)
    b_m = tl.max(b_s, 1)
    b_m = tl.where(b_m == float("-inf"), 0.0, b_m)
    b_p = tl.exp2(b_s - b_m[:, None])
    b_l = tl.sum(b_p, 1)
    b_l = tl.where(b_l == 0.0, 1.0, b_l)
    b_p = b_p / b_l[:, None]
    b_p = _isolated(b_p, m_q, m_k, o_qr, o_kr, MASK_MODE, SHIFTED)
    return b_c, b_p, b_m + tl.log2(b_l)


@triton.jit
def _isolated(b_p, m_q, m_k, o_qr, o_kr, MASK_MODE: tl.constexpr, SHIFTED: tl.constexpr):
    # [BM, BN] probabilities, exactly 0 at the pairs a full mask excludes, even in a row made NaN
    # by its own window's Inf/NaN: it must not reach others
    if MASK_MODE == _MASK_ALWAYS:
        b_p = tl.where(_allowed(m_q, m_k, o_qr, o_kr, SHIFTED), b_p, 0.0)
    return b_p


@triton.jit(do_not_specialize=["NWIN"])
def window_attention_fwd_kernel(
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
            b_nk, b_rk = _norms(b_k.to(ACC))
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
                b_nq, b_rq = _norms(b_q.to(ACC))
            else:
                b_rq = 1.0
            # [BM, BN]
            b_c, b_p, b_lse = _scores(b_q, b_k, b_rq, b_rk, bias, o_qn, o_kn, i_tile, b_scale,
                          m_q, m_k, o_qr, o_kr, NWH, NWW, EDGE_WH, EDGE_WW,
                          N, COSINE, HAS_BIAS, MASK_MODE, SHIFTED, ACC, UPCAST, PREC)
            # [BM, BD]
            b_o = _dot(b_p.to(b_v.dtype), b_v, ACC, UPCAST, PREC)
            p_o = o + _offsets(o_qb, o_qh, o_qw, s_ob, s_oh, s_ow)[:, None] + o_od[None, :]
            tl.store(p_o, b_o.to(o.dtype.element_ty), mask=m_qd)


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


@triton.jit(do_not_specialize=["NWIN"])
def window_attention_small_fwd_kernel(
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
            b_q = b_q * _norms(b_q)[1][:, :, None]
        # [WPT, BN, BN] q.k, key j's products written into column j
        b_c = tl.zeros([WPT, BN, BN], dtype=ACC)
        for j in tl.static_range(N):
            b_kj, _, _, _, _ = _small_key(k, o_win, j, o_kd, m_d, s_kb, s_kh, s_kw, H, W, NWH, NWW, NWIN,
                                          WH, WW, SH, SW, N, ACC)
            if COSINE:
                b_kj = b_kj * _norms(b_kj)[1][:, None]
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
