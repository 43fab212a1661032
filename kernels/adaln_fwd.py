"""Forward Triton kernels of the fused adaLN forms (``kernels/adaln.py`` plans and launches
them), and the tile helpers the backward kernels (``adaln_bwd``) share: token pointers, tile
tokens, LayerNorm.
"""
import triton
import triton.language as tl

# Runtime ints of the token kernels that Triton must not specialise (== 1 as a constexpr,
# divisibility by 16 as an attribute): TPP, tokens per program, follows the batch through the
# grid and is only a loop bound, so specialising it would compile one binary per batch size.
# T and C stay specialised: their divisibility proves the token and channel masks constant over
# vectors (128-bit loads).
TOKEN_KERNEL_RUNTIME_INTS = ["TPP"]


@triton.jit
def _ptrs(base, i_b, o_t, o_c, s_b, s_t, s_c):
    # [BT, BC] pointers of tokens o_t, channels o_c of sample i_b; int64 offsets
    return base + i_b * s_b + o_t[:, None].to(tl.int64) * s_t + o_c[None, :].to(tl.int64) * s_c


@triton.jit
def _tile_tokens(i_p, TILES, i_it, BT: tl.constexpr):
    # [BT] tokens of tile i_it of program i_p (TILES tiles of BT tokens per program). Written as a
    # multiple of BT, not as i_p * TPP: the compiler then proves BT-token alignment, so a
    # channels-first map (tokens contiguous) is read in vectors whatever the runtime TPP is.
    return (i_p * TILES + i_it) * BT + tl.arange(0, BT)


@triton.jit
def _normalize(b_x, m, C, eps):
    # [BT, BC] rows of b_x (zero where masked) -> (x - mean) * rstd (zero where masked), [BT] rstd
    b_mean = tl.sum(b_x, axis=1) / C
    b_d = tl.where(m, b_x - b_mean[:, None], 0.0)
    b_rstd = tl.rsqrt(tl.sum(b_d * b_d, axis=1) / C + eps)
    return b_d * b_rstd[:, None], b_rstd


@triton.jit(do_not_specialize=TOKEN_KERNEL_RUNTIME_INTS)
def modulate_fwd_kernel(
    x, shift, scale, o,
    T, C, eps, TPP,
    s_xb, s_xt, s_xc,
    s_ob, s_ot, s_oc,
    s_shift, s_scale,
    NORM: tl.constexpr,
    BT: tl.constexpr,
    BC: tl.constexpr,
):
    # o = (LN(x) if NORM else x) * (1 + scale) + shift
    i_b, i_p = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    o_c = tl.arange(0, BC)
    m_c = o_c < C
    # [BC]
    b_shift = tl.load(shift + i_b * s_shift + o_c, mask=m_c, other=0.0).to(tl.float32)
    b_scale1 = 1.0 + tl.load(scale + i_b * s_scale + o_c, mask=m_c, other=0.0).to(tl.float32)
    for i_it in range(0, TPP // BT):
        o_t = _tile_tokens(i_p, TPP // BT, i_it, BT)
        m = (o_t < T)[:, None] & m_c[None, :]
        # [BT, BC]
        b_x = tl.load(_ptrs(x, i_b, o_t, o_c, s_xb, s_xt, s_xc), mask=m, other=0.0).to(tl.float32)
        if NORM:
            b_x, _ = _normalize(b_x, m, C, eps)
        b_o = b_x * b_scale1[None, :] + b_shift[None, :]
        tl.store(_ptrs(o, i_b, o_t, o_c, s_ob, s_ot, s_oc), b_o.to(o.dtype.element_ty), mask=m)


@triton.jit(do_not_specialize=TOKEN_KERNEL_RUNTIME_INTS)
def gated_residual_fwd_kernel(
    x, y, gate, o,
    T, C, TPP,
    s_xb, s_xt, s_xc,
    s_yb, s_yt, s_yc,
    s_ob, s_ot, s_oc,
    s_gate,
    BT: tl.constexpr,
    BC: tl.constexpr,
):
    # o = x + gate * y
    i_b, i_p = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    o_c = tl.arange(0, BC)
    m_c = o_c < C
    # [BC]
    b_gate = tl.load(gate + i_b * s_gate + o_c, mask=m_c, other=0.0).to(tl.float32)
    for i_it in range(0, TPP // BT):
        o_t = _tile_tokens(i_p, TPP // BT, i_it, BT)
        m = (o_t < T)[:, None] & m_c[None, :]
        # [BT, BC]
        b_x = tl.load(_ptrs(x, i_b, o_t, o_c, s_xb, s_xt, s_xc), mask=m, other=0.0).to(tl.float32)
        b_y = tl.load(_ptrs(y, i_b, o_t, o_c, s_yb, s_yt, s_yc), mask=m, other=0.0).to(tl.float32)
        b_o = b_x + b_gate[None, :] * b_y
        tl.store(_ptrs(o, i_b, o_t, o_c, s_ob, s_ot, s_oc), b_o.to(o.dtype.element_ty), mask=m)


@triton.jit(do_not_specialize=TOKEN_KERNEL_RUNTIME_INTS)
def modulate_layernorm_fwd_kernel(
    x, shift, scale, w, b, o,
    T, C, eps, TPP,
    s_xb, s_xt, s_xc,
    s_ob, s_ot, s_oc,
    s_shift, s_scale,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    BT: tl.constexpr,
    BC: tl.constexpr,
):
    # o = LN(x * (1 + scale) + shift) * w + b
    i_b, i_p = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    o_c = tl.arange(0, BC)
    m_c = o_c < C
    # [BC]
    b_shift = tl.load(shift + i_b * s_shift + o_c, mask=m_c, other=0.0).to(tl.float32)
    b_scale1 = 1.0 + tl.load(scale + i_b * s_scale + o_c, mask=m_c, other=0.0).to(tl.float32)
    if HAS_W:
        b_w = tl.load(w + o_c, mask=m_c, other=0.0).to(tl.float32)
    if HAS_B:
        b_b = tl.load(b + o_c, mask=m_c, other=0.0).to(tl.float32)
    for i_it in range(0, TPP // BT):
        o_t = _tile_tokens(i_p, TPP // BT, i_it, BT)
        m = (o_t < T)[:, None] & m_c[None, :]
        # [BT, BC]
        b_x = tl.load(_ptrs(x, i_b, o_t, o_c, s_xb, s_xt, s_xc), mask=m, other=0.0).to(tl.float32)
        b_z = tl.where(m, b_x * b_scale1[None, :] + b_shift[None, :], 0.0)
        b_o, _ = _normalize(b_z, m, C, eps)
        if HAS_W:
            b_o = b_o * b_w[None, :]
        if HAS_B:
            b_o = b_o + b_b[None, :]
        tl.store(_ptrs(o, i_b, o_t, o_c, s_ob, s_ot, s_oc), b_o.to(o.dtype.element_ty), mask=m)


@triton.jit(do_not_specialize=TOKEN_KERNEL_RUNTIME_INTS)
def residual_layernorm_fwd_kernel(
    x, y, w, b, keep, o,
    T, C, eps, TPP,
    s_xb, s_xt, s_xc,
    s_yb, s_yt, s_yc,
    s_ob, s_ot, s_oc,
    s_keep,
    HAS_W: tl.constexpr,
    HAS_B: tl.constexpr,
    HAS_KEEP: tl.constexpr,
    BT: tl.constexpr,
    BC: tl.constexpr,
):
    # o = x + keep * (LN(y) * w + b)
    i_b, i_p = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)
    o_c = tl.arange(0, BC)
    m_c = o_c < C
    # [BC]
    if HAS_W:
        b_w = tl.load(w + o_c, mask=m_c, other=0.0).to(tl.float32)
    if HAS_B:
        b_b = tl.load(b + o_c, mask=m_c, other=0.0).to(tl.float32)
    if HAS_KEEP:
        b_keep = tl.load(keep + i_b * s_keep).to(tl.float32)
    for i_it in range(0, TPP // BT):
        o_t = _tile_tokens(i_p, TPP // BT, i_it, BT)
        m = (o_t < T)[:, None] & m_c[None, :]
        # [BT, BC]
        b_x = tl.load(_ptrs(x, i_b, o_t, o_c, s_xb, s_xt, s_xc), mask=m, other=0.0).to(tl.float32)
        b_y = tl.load(_ptrs(y, i_b, o_t, o_c, s_yb, s_yt, s_yc), mask=m, other=0.0).to(tl.float32)
        b_n, _ = _normalize(b_y, m, C, eps)
        if HAS_W:
            b_n = b_n * b_w[None, :]
        if HAS_B:
            b_n = b_n + b_b[None, :]
        if HAS_KEEP:
            b_n = b_n * b_keep
        b_o = b_x + b_n
        tl.store(_ptrs(o, i_b, o_t, o_c, s_ob, s_ot, s_oc), b_o.to(o.dtype.element_ty), mask=m)
