"""Backward Triton kernels of the fused adaLN forms (``kernels/adaln.py`` plans and launches
them): one per form, each writing its per-program partial sums, and ``sum_partials_kernel``, the
fixed-order reduction of those partials.
"""
import triton
import triton.language as tl

from .adaln_fwd import TOKEN_KERNEL_RUNTIME_INTS, _normalize, _ptrs, _tile_tokens


@triton.jit
def _normalize_bwd(b_g, b_xhat, b_rstd, m, C):
    # gradient through xhat = LN(x) given b_g = dL/dxhat (zero where masked)
    b_c1 = tl.sum(b_g * b_xhat, axis=1) / C
    b_c2 = tl.sum(b_g, axis=1) / C
    return tl.where(m, (b_g - b_c2[:, None] - b_xhat * b_c1[:, None]) * b_rstd[:, None], 0.0)


@triton.jit(do_not_specialize=TOKEN_KERNEL_RUNTIME_INTS)
def modulate_bwd_kernel(
    x, scale, do, dx, part,
    T, C, eps, TPP,
    s_xb, s_xt, s_xc,
    s_dob, s_dot, s_doc,
    s_dxb, s_dxt, s_dxc,
    s_scale,
    NORM: tl.constexpr,
    BT: tl.constexpr,
    BC: tl.constexpr,
):
    # dx; per-program partials part[0] = sum_t do (dshift), part[1] = sum_t do * xhat (dscale)
    i_b, i_p = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    NB, NP = tl.num_programs(0), tl.num_programs(1)
    o_c = tl.arange(0, BC)
    m_c = o_c < C
    # [BC]
    b_scale1 = 1.0 + tl.load(scale + i_b * s_scale + o_c, mask=m_c, other=0.0).to(tl.float32)
    b_dshift = tl.zeros([BC], dtype=tl.float32)
    b_dscale = tl.zeros([BC], dtype=tl.float32)
    for i_it in range(0, TPP // BT):
        o_t = _tile_tokens(i_p, TPP // BT, i_it, BT)
        m = (o_t < T)[:, None] & m_c[None, :]
        # [BT, BC]
        b_x = tl.load(_ptrs(x, i_b, o_t, o_c, s_xb, s_xt, s_xc), mask=m, other=0.0).to(tl.float32)
        b_do = tl.load(_ptrs(do, i_b, o_t, o_c, s_dob, s_dot, s_doc), mask=m, other=0.0).to(tl.float32)
        b_g = b_do * b_scale1[None, :]
        if NORM:
            b_xhat, b_rstd = _normalize(b_x, m, C, eps)
            b_dx = _normalize_bwd(b_g, b_xhat, b_rstd, m, C)
        else:
            b_xhat = b_x
            b_dx = b_g
        tl.store(_ptrs(dx, i_b, o_t, o_c, s_dxb, s_dxt, s_dxc), b_dx.to(dx.dtype.element_ty), mask=m)
        b_dshift += tl.sum(b_do, axis=0)
        b_dscale += tl.sum(b_do * b_xhat, axis=0)
    p_part = part + (i_b * NP + i_p) * C + o_c
    tl.store(p_part, b_dshift, mask=m_c)
    tl.store(p_part + NB * NP * C, b_dscale, mask=m_c)


@triton.jit(do_not_specialize=TOKEN_KERNEL_RUNTIME_INTS)
def gated_residual_bwd_kernel(
    y, gate, do, dy, part,
    T, C, TPP,
    s_yb, s_yt, s_yc,
    s_dob, s_dot, s_doc,
    s_dyb, s_dyt, s_dyc,
    s_gate,
    BT: tl.constexpr,
    BC: tl.constexpr,
):
    # dy = gate * do; per-program partial part[0] = sum_t do * y (dgate); dx = do needs no kernel
    i_b, i_p = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    NP = tl.num_programs(1)
    o_c = tl.arange(0, BC)
    m_c = o_c < C
    # [BC]
    b_gate = tl.load(gate + i_b * s_gate + o_c, mask=m_c, other=0.0).to(tl.float32)
    b_dgate = tl.zeros([BC], dtype=tl.float32)
    for i_it in range(0, TPP // BT):
        o_t = _tile_tokens(i_p, TPP // BT, i_it, BT)
        m = (o_t < T)[:, None] & m_c[None, :]
        # [BT, BC]
        b_y = tl.load(_ptrs(y, i_b, o_t, o_c, s_yb, s_yt, s_yc), mask=m, other=0.0).to(tl.float32)
        b_do = tl.load(_ptrs(do, i_b, o_t, o_c, s_dob, s_dot, s_doc), mask=m, other=0.0).to(tl.float32)
        b_dy = b_do * b_gate[None, :]
        tl.store(_ptrs(dy, i_b, o_t, o_c, s_dyb, s_dyt, s_dyc), b_dy.to(dy.dtype.element_ty), mask=m)
        b_dgate += tl.sum(b_do * b_y, axis=0)
    tl.store(part + (i_b * NP + i_p) * C + o_c, b_dgate, mask=m_c)


@triton.jit(do_not_specialize=TOKEN_KERNEL_RUNTIME_INTS)
def modulate_layernorm_bwd_kernel(
    x, shift, scale, w, do, dx, part,
    T, C, eps, TPP,
    s_xb, s_xt, s_xc,
    s_dob, s_dot, s_doc,
    s_dxb, s_dxt, s_dxc,
    s_shift, s_scale,
    HAS_W: tl.constexpr,
    BT: tl.constexpr,
    BC: tl.constexpr,
):
    # dx; partials part[0] = sum_t dz (dshift), part[1] = sum_t dz * x (dscale),
    # part[2] = sum_t do * zhat (dweight), part[3] = sum_t do (dbias)
    i_b, i_p = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    NB, NP = tl.num_programs(0), tl.num_programs(1)
    o_c = tl.arange(0, BC)
    m_c = o_c < C
    # [BC]
    b_shift = tl.load(shift + i_b * s_shift + o_c, mask=m_c, other=0.0).to(tl.float32)
    b_scale1 = 1.0 + tl.load(scale + i_b * s_scale + o_c, mask=m_c, other=0.0).to(tl.float32)
    if HAS_W:
        b_w = tl.load(w + o_c, mask=m_c, other=0.0).to(tl.float32)
    b_dshift = tl.zeros([BC], dtype=tl.float32)
    b_dscale = tl.zeros([BC], dtype=tl.float32)
    b_dw = tl.zeros([BC], dtype=tl.float32)
    b_db = tl.zeros([BC], dtype=tl.float32)
    for i_it in range(0, TPP // BT):
        o_t = _tile_tokens(i_p, TPP // BT, i_it, BT)
        m = (o_t < T)[:, None] & m_c[None, :]
        # [BT, BC]
        b_x = tl.load(_ptrs(x, i_b, o_t, o_c, s_xb, s_xt, s_xc), mask=m, other=0.0).to(tl.float32)
        b_do = tl.load(_ptrs(do, i_b, o_t, o_c, s_dob, s_dot, s_doc), mask=m, other=0.0).to(tl.float32)
        b_z = tl.where(m, b_x * b_scale1[None, :] + b_shift[None, :], 0.0)
        b_zhat, b_rstd = _normalize(b_z, m, C, eps)
        if HAS_W:
            b_g = b_do * b_w[None, :]
        else:
            b_g = b_do
        b_dz = _normalize_bwd(b_g, b_zhat, b_rstd, m, C)
        b_dx = b_dz * b_scale1[None, :]
        tl.store(_ptrs(dx, i_b, o_t, o_c, s_dxb, s_dxt, s_dxc), b_dx.to(dx.dtype.element_ty), mask=m)
        b_dshift += tl.sum(b_dz, axis=0)
        b_dscale += tl.sum(b_dz * b_x, axis=0)
        b_dw += tl.sum(b_do * b_zhat, axis=0)
        b_db += tl.sum(b_do, axis=0)
    p_part = part + (i_b * NP + i_p) * C + o_c
    n_part = NB * NP * C
    tl.store(p_part, b_dshift, mask=m_c)
    tl.store(p_part + n_part, b_dscale, mask=m_c)
    tl.store(p_part + 2 * n_part, b_dw, mask=m_c)
    tl.store(p_part + 3 * n_part, b_db, mask=m_c)


@triton.jit(do_not_specialize=TOKEN_KERNEL_RUNTIME_INTS)
def residual_layernorm_bwd_kernel(
    y, w, b, keep, do, dy, part, part_keep,
    T, C, eps, TPP,
    s_yb, s_yt, s_yc,
    s_dob, s_dot, s_doc,
    s_dyb, s_dyt, s_dyc,
    s_keep,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    HAS_KEEP: tl.constexpr,
    KEEP_GRAD: tl.constexpr,
    BT: tl.constexpr,
    BC: tl.constexpr,
):
    # dy; partials part[0] = sum_t dn * yhat (dweight), part[1] = sum_t dn (dbias) with
    # dn = keep * do, and part_keep = sum_{t,c} do * (yhat * w + b) (dkeep); dx = do needs no kernel
    i_b, i_p = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    NB, NP = tl.num_programs(0), tl.num_programs(1)
    o_c = tl.arange(0, BC)
    m_c = o_c < C
    # [BC]
    if HAS_W:
        b_w = tl.load(w + o_c, mask=m_c, other=0.0).to(tl.float32)
    if HAS_B:
        b_b = tl.load(b + o_c, mask=m_c, other=0.0).to(tl.float32)
    if HAS_KEEP:
        b_keep = tl.load(keep + i_b * s_keep).to(tl.float32)
    b_dw = tl.zeros([BC], dtype=tl.float32)
    b_db = tl.zeros([BC], dtype=tl.float32)
    b_dkeep = tl.zeros([BC], dtype=tl.float32)
    for i_it in range(0, TPP // BT):
        o_t = _tile_tokens(i_p, TPP // BT, i_it, BT)
        m = (o_t < T)[:, None] & m_c[None, :]
        # [BT, BC]
        b_y = tl.load(_ptrs(y, i_b, o_t, o_c, s_yb, s_yt, s_yc), mask=m, other=0.0).to(tl.float32)
        b_do = tl.load(_ptrs(do, i_b, o_t, o_c, s_dob, s_dot, s_doc), mask=m, other=0.0).to(tl.float32)
        b_yhat, b_rstd = _normalize(b_y, m, C, eps)
        if KEEP_GRAD:
            b_n = b_yhat
            if HAS_W:
                b_n = b_n * b_w[None, :]
            if HAS_B:
                b_n = b_n + b_b[None, :]
            b_dkeep += tl.sum(b_do * b_n, axis=0)
        if HAS_KEEP:
            b_dn = b_do * b_keep
        else:
            b_dn = b_do
        if HAS_W:
            b_g = b_dn * b_w[None, :]
        else:
            b_g = b_dn
        b_dy = _normalize_bwd(b_g, b_yhat, b_rstd, m, C)
        tl.store(_ptrs(dy, i_b, o_t, o_c, s_dyb, s_dyt, s_dyc), b_dy.to(dy.dtype.element_ty), mask=m)
        b_dw += tl.sum(b_dn * b_yhat, axis=0)
        b_db += tl.sum(b_dn, axis=0)
    p_part = part + (i_b * NP + i_p) * C + o_c
    tl.store(p_part, b_dw, mask=m_c)
    tl.store(p_part + NB * NP * C, b_db, mask=m_c)
    if KEEP_GRAD:
        tl.store(part_keep + i_b * NP + i_p, tl.sum(b_dkeep, axis=0))


@triton.jit
def sum_partials_kernel(
    part, o1, o2,
    R, P, C,
    BP: tl.constexpr,
    BC: tl.constexpr,
):
    # o_k[r, c] = sum_p part[k, r, p, c] for k = program_id(2) in {0, 1}, summed in a fixed order
    i_r, i_c, i_k = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_c = i_c * BC + tl.arange(0, BC)
    m_c = o_c < C
    # [BP, BC]
    b_acc = tl.zeros([BP, BC], dtype=tl.float32)
    for i_p in range(0, P, BP):
        o_p = i_p + tl.arange(0, BP)
        m = (o_p < P)[:, None] & m_c[None, :]
        p_part = part + ((i_k * R + i_r) * P + o_p[:, None].to(tl.int64)) * C + o_c[None, :]
        b_acc += tl.load(p_part, mask=m, other=0.0)
    # [BC]
    b_sum = tl.sum(b_acc, axis=0)
    if i_k == 0:
        tl.store(o1 + i_r * C + o_c, b_sum.to(o1.dtype.element_ty), mask=m_c)
    else:
        tl.store(o2 + i_r * C + o_c, b_sum.to(o2.dtype.element_ty), mask=m_c)
