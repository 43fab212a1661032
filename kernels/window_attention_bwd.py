"""Backward Triton kernels of the window attention (``kernels/window_attention.py`` plans and
launches them): ``window_attention_bwd_kernel`` (DOT path; one launch writes dq and/or dk, dv, see
``BackwardPass``) and ``window_attention_small_bwd_kernel`` (SMALL path). Both recompute the
scores and the softmax from q, k, v and do with the forward's tile helpers, and share the
cosine-attention gradient ``_cosine_grad``.
"""
import enum

import triton
import triton.language as tl

from .window_attention_fwd import (_EPS, _MASK_ALWAYS, _allowed, _channels, _column, _dot, _isolated, _logits,
                                   _norms, _offsets, _scores, _small_bias, _small_key, _small_probs, _small_step,
                                   _temperature, _tokens)


class SoftmaxStats(enum.IntEnum):
    """What a backward launch does with the per-row softmax statistics (the ``STATS`` constexpr)."""

    # recomputed from the tile, kept in registers
    NONE = 0
    # recomputed from the tile and written for a later launch of the same backward
    WRITE = 1
    # read: the launch sees only a block of each row's keys
    READ = 2


_STATS_WRITE: tl.constexpr = tl.constexpr(int(SoftmaxStats.WRITE))
_STATS_READ: tl.constexpr = tl.constexpr(int(SoftmaxStats.READ))


@triton.jit
def _cosine_grad(b_g, b_xn, b_nx, b_rx, b_norm_term, b_scale):
    # The gradient of cosine attention's scores tau * (xn . yn) with respect to x, for x = q (one
    # query per row; g = ds kn, the norm term rowsum(ds * c)) or x = k (g = ds^T qn, colsum(ds * c)),
    # with xn = x / max(|x|, eps), |x| = b_nx and 1 / max(|x|, eps) = b_rx:
    #     dx = tau (g - xn * norm_term) / max(|x|, eps),  no norm term where |x| < eps (clamped)
    # Tiles of any rank: b_g and b_xn [..., BD], the rest [...] (b_scale a scalar).
    b_t = tl.where(b_nx >= _EPS, b_norm_term, 0.0)
    return (b_g - b_xn * tl.expand_dims(b_t, -1)) * tl.expand_dims(b_scale * b_rx, -1)


@triton.jit(do_not_specialize=["NWIN", "TILES"])
def window_attention_bwd_kernel(
    q, k, v, do, dq, dk, dv, bias, logit_scale, dbias_part, dtemp_part, stats,
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
    DQ: tl.constexpr, DKV: tl.constexpr, QG: tl.constexpr, KB: tl.constexpr, STATS: tl.constexpr,
    ACC: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
):
    # do has strides s_o*; dq, dk and dv share the strides s_g*. The launch writes dq (DQ) and/or
    # dk and dv (DKV), and the bias-gradient (HAS_DBIAS) and logit-scale (HAS_DTEMP) partials.
    # Blocked passes (``BackwardPass``): QG programs share a range of tiles, each taking one group
    # of NUM_QB query blocks; the keys of a tile are taken in KB blocks of BK. STATS: the softmax
    # statistics of each query row, [2, BN] per tile and head (lse in log2 units, then delta), are
    # written (by a pass that sees every key of the row) or read (by one that does not).
    i_p, i_hd, n_hd = tl.program_id(0), tl.program_id(1), tl.num_programs(1)
    if QG > 1:
        i_qg = i_p % QG
        i_p = i_p // QG
    else:
        i_qg = 0
    SHIFTED: tl.constexpr = (SH > 0) | (SW > 0)
    BK: tl.constexpr = BN // KB
    o_d = tl.arange(0, BD)
    m_d = o_d < D
    o_m = tl.arange(0, BM)
    # [BD]
    o_qd = _channels(i_hd, o_d, s_qn, s_qd)
    o_kd = _channels(i_hd, o_d, s_kn, s_kd)
    o_vd = _channels(i_hd, o_d, s_vn, s_vd)
    o_od = _channels(i_hd, o_d, s_on, s_od)
    o_gd = _channels(i_hd, o_d, s_gn, s_gd)
    b_scale = _temperature(logit_scale, i_hd, s_ls, scale, COSINE, ACC)
    bias += i_hd.to(tl.int64) * (N * N)
    # this program's partial sums, written once at the end (fixed order: deterministic); the bias
    # partial has a row per query of every group
    p_db = dbias_part + (i_p * n_hd + i_hd).to(tl.int64) * (QG * NUM_QB * BM * BN)
    # [BM, BK] (a pass with the bias gradient takes all keys at once: BK == BN)
    b_db = tl.zeros([BM, BK], dtype=ACC)
    # [BM]
    b_dt = tl.zeros([BM], dtype=ACC)
    for i_it in range(TILES):
        i_tile = i_p * TILES + i_it
        p_st = stats + (i_tile.to(tl.int64) * n_hd + i_hd) * (2 * BN)
        for i_kb in tl.static_range(KB):
            # [BK] key tokens
            o_tk = i_kb * BK + tl.arange(0, BK)
            o_kb, o_kh, o_kw, o_kn, o_kr, m_k = _tokens(i_tile, o_tk, H, W, NWH, NWW, NWIN, WH, WW, SH, SW, N)
            m_kd = m_k[:, None] & m_d[None, :]
            # [BK, BD]
            b_k = tl.load(k + _offsets(o_kb, o_kh, o_kw, s_kb, s_kh, s_kw)[:, None] + o_kd[None, :], mask=m_kd,
                          other=0.0)
            b_v = tl.load(v + _offsets(o_kb, o_kh, o_kw, s_vb, s_vh, s_vw)[:, None] + o_vd[None, :], mask=m_kd,
                          other=0.0)
            if COSINE:
                # [BK] |k| and 1 / max(|k|, eps)
                b_nk, b_rk = _norms(b_k.to(ACC))
            else:
                b_rk = 1.0
            if DKV:
                # [BK, BD] ds^T q (cosine: ds^T qn) and p^T do, and [BK] colsum(ds * c) (cosine), summed
                # over the query blocks
                b_dk = tl.zeros([BK, BD], dtype=ACC)
                b_dv = tl.zeros([BK, BD], dtype=ACC)
                b_dkn = tl.zeros([BK], dtype=ACC)
            if COSINE:
                b_kn = (b_k.to(ACC) * b_rk[:, None]).to(b_k.dtype)
            for i_qb in range(NUM_QB):
                # [BM] query tokens
                o_tq = (i_qg * NUM_QB + i_qb) * BM + o_m
                o_qb, o_qh, o_qw, o_qn, o_qr, m_q = _tokens(i_tile, o_tq, H, W, NWH, NWW, NWIN, WH, WW, SH, SW, N)
                m_qd = m_q[:, None] & m_d[None, :]
                # [BM, BD]
                b_q = tl.load(q + _offsets(o_qb, o_qh, o_qw, s_qb, s_qh, s_qw)[:, None] + o_qd[None, :], mask=m_qd,
                              other=0.0)
                b_do = tl.load(do + _offsets(o_qb, o_qh, o_qw, s_ob, s_oh, s_ow)[:, None] + o_od[None, :],
                               mask=m_qd, other=0.0)
                if COSINE:
                    b_nq, b_rq = _norms(b_q.to(ACC))
                else:
                    b_rq = 1.0
                # [BM, BK]
                if STATS == _STATS_READ:
                    b_c, b_s = _logits(b_q, b_k, b_rq, b_rk, bias, o_qn, o_kn, i_tile, b_scale,
                                       m_q, m_k, o_qr, o_kr, NWH, NWW, EDGE_WH, EDGE_WW,
                                       N, COSINE, HAS_BIAS, MASK_MODE, SHIFTED, ACC, UPCAST, PREC)
                    b_p = tl.exp2(b_s - tl.load(p_st + o_tq)[:, None])
                    b_p = _isolated(b_p, m_q, m_k, o_qr, o_kr, MASK_MODE, SHIFTED)
                else:
                    b_c, b_p, b_lse = _scores(b_q, b_k, b_rq, b_rk, bias, o_qn, o_kn, i_tile, b_scale,
                                              m_q, m_k, o_qr, o_kr, NWH, NWW, EDGE_WH, EDGE_WW,
                                              N, COSINE, HAS_BIAS, MASK_MODE, SHIFTED, ACC, UPCAST, PREC)
                if DKV:
                    b_dv += _dot(tl.trans(b_p.to(b_do.dtype)), b_do, ACC, UPCAST, PREC)
                # [BM, BK] dp, then ds = dL/d(score) with delta = rowsum(p * dp) over all the row's keys
                b_dp = _dot(b_do, tl.trans(b_v), ACC, UPCAST, PREC)
                if MASK_MODE == _MASK_ALWAYS:
                    # a masked or foreign key contributes exactly nothing (dp may be Inf there)
                    m_a = _allowed(m_q, m_k, o_qr, o_kr, SHIFTED)
                    b_dp = tl.where(m_a, b_dp, 0.0)
                if STATS == _STATS_READ:
                    b_delta = tl.load(p_st + BN + o_tq)
                else:
                    b_delta = tl.sum(b_p * b_dp, 1)
                if STATS == _STATS_WRITE:
                    tl.store(p_st + o_tq, b_lse)
                    tl.store(p_st + BN + o_tq, b_delta)
                b_ds = b_p * (b_dp - b_delta[:, None])
                if MASK_MODE == _MASK_ALWAYS:
                    b_ds = tl.where(m_a, b_ds, 0.0)
                if COSINE and (DKV or HAS_DTEMP):
                    # [BM, BK] ds * c in fp32: its column sums are the norm term of dk, its row sums the
                    # share of dtau (a sum that cancels, ds summing to 0 over each row: 16-bit products
                    # of ds would lose it, and so would a ds whose p differs from the p of its delta)
                    b_dsc = b_ds * b_c
                    if MASK_MODE == _MASK_ALWAYS:
                        b_dsc = tl.where(m_a, b_dsc, 0.0)
                    if DKV:
                        b_dkn += tl.sum(b_dsc, 0)
                    if HAS_DTEMP:
                        b_dt += tl.sum(b_dsc, 1)
                if HAS_DBIAS:
                    if NUM_QB == 1:
                        b_db += b_ds
                    else:
                        # query blocks of large windows: read-modify-write of this program's own partial
                        p_dbq = p_db + o_tq[:, None] * BN + o_tk[None, :]
                        tl.store(p_dbq, tl.load(p_dbq) + b_ds)
                        # the next window's read of these addresses must see this write
                        tl.debug_barrier()
                b_dsh = b_ds.to(b_q.dtype)
                if COSINE:
                    b_qn = b_q.to(ACC) * b_rq[:, None]
                if DQ:
                    if COSINE:
                        # [BM, BD] ds kn. Its dot with qn is rowsum(ds * c) (c = qn . kn), the norm term
                        # of dq: a pass without dk and dv keeps no [BM, BK] tile of c live.
                        b_dq = _dot(b_dsh, b_kn, ACC, UPCAST, PREC)
                        b_dq = _cosine_grad(b_dq, b_qn, b_nq, b_rq, tl.sum(b_qn * b_dq, 1), b_scale)
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
                    b_dk = _cosine_grad(b_dk, b_k.to(ACC) * b_rk[:, None], b_nk, b_rk, b_dkn, b_scale)
                o_kg = _offsets(o_kb, o_kh, o_kw, s_gb, s_gh, s_gw)[:, None] + o_gd[None, :]
                tl.store(dk + o_kg, b_dk.to(dk.dtype.element_ty), mask=m_kd)
                tl.store(dv + o_kg, b_dv.to(dv.dtype.element_ty), mask=m_kd)
    if HAS_DBIAS:
        if NUM_QB == 1:
            tl.store(p_db + (i_qg * BM + o_m)[:, None] * BN + tl.arange(0, BK)[None, :], b_db)
    if HAS_DTEMP:
        tl.store(dtemp_part + (i_p * QG + i_qg) * n_hd + i_hd, tl.sum(b_dt, 0))


@triton.jit(do_not_specialize=["NWH", "NWW", "NWIN", "TILES"])
def window_attention_small_bwd_kernel(
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
            b_nq, b_rq = _norms(b_q)
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
                b_kj = b_kj * _norms(b_kj)[1][:, None]
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
                b_nkj, b_rkj = _norms(b_kj)
                b_kj = b_kj * b_rkj[:, None]
                b_dkj = _cosine_grad(b_dkj, b_kj, b_nkj, b_rkj, tl.sum(_column(b_dsc, o_n, j), 1), b_scale)
            else:
                b_dkj = b_dkj * scale
            b_dq += b_dsj[:, :, None] * b_kj[:, None, :]
            o_jg = _offsets(o_jb, o_jh, o_jw, s_gb, s_gh, s_gw)[:, None] + o_gd[None, :]
            tl.store(dk + o_jg, b_dkj.to(dk.dtype.element_ty), mask=m_jd)
            tl.store(dv + o_jg, b_dvj.to(dv.dtype.element_ty), mask=m_jd)
        if COSINE:
            b_dq = _cosine_grad(b_dq, b_q, b_nq, b_rq, b_dqn, b_scale)
        else:
            b_dq = b_dq * scale
        p_dq = dq + _offsets(o_tb, o_th, o_tw, s_gb, s_gh, s_gw)[:, :, None] + o_gd[None, None, :]
        tl.store(p_dq, b_dq.to(dq.dtype.element_ty), mask=m_td)
    if HAS_DBIAS:
        p_db = dbias_part + (i_p * n_hd + i_hd).to(tl.int64) * (BN * BN)
        tl.store(p_db + o_n[:, None] * BN + o_n[None, :], b_db)
    if HAS_DTEMP:
        tl.store(dtemp_part + i_p * n_hd + i_hd, tl.sum(tl.sum(b_dt, 1), 0))
