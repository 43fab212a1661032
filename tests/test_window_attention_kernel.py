"""The Triton window-attention kernels (``backend="triton"``, run through Triton's interpreter)
against the PyTorch reference backend: forward, every gradient, the ``out=`` view, determinism,
the kernel's limits, a whole XSwin, and ``torch.compile``.

Every comparison runs the reference in float64 on the kernel's own (rounded) inputs. Kernel
allocations are NaN-poisoned, so an element the kernel fails to write fails the comparison.
"""
import copy

import pytest
import torch

from families import tiny
from helpers import LOG_100, assert_close, assert_compiles_like_eager, randomize_, swin_block_on_torch
from xswin_fast import XSwin, ops
from xswin_fast.kernels import device
from xswin_fast.kernels import window_attention as wa
from xswin_fast.layers.attention import WindowAttention, WindowCrossAttention


def make_inputs(B, H, W, window, nh, d, cross, mode, bias, dtype, seed=0):
    """q, k, v as strided views of fused projections (self: one (B, H, W, 3, heads, d) tensor;
    cross: q from one map, k and v from another), bias and logit_scale in the same dtype."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, H, W, 3, nh, d, generator=g).to(dtype)
    q, k, v = qkv.unbind(3)
    if cross:
        k, v = torch.randn(B, H, W, 2, nh, d, generator=g).to(dtype).unbind(3)
    N = window[0] * window[1]
    b = torch.randn(nh, N, N, generator=g).to(dtype) if bias else None
    # temperatures from just under the clamp (100) down to ~1.6, plus one above the clamp
    ls = None
    if mode == "cos":
        ls = torch.linspace(LOG_100 - 0.2, 0.5, nh).to(dtype)
        if nh > 2:
            ls[-1] = LOG_100 + 0.5
    scale = 0.37 if mode == "dot_scale" else None
    return q, k, v, b, ls, scale


def run(backend, q, k, v, window, shift, bias, ls, scale, grad, out=None):
    """Forward and the gradients of <o, grad> with respect to every differentiable input."""
    inputs = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    extra = [t.detach().clone().requires_grad_() if t is not None else None for t in (bias, ls)]
    o = ops.window_attention(*inputs, window, shift, *extra, scale, out=out, backend=backend)
    leaves = inputs + [t for t in extra if t is not None]
    return o, torch.autograd.grad(o, leaves, grad)


def reference(q, k, v, window, shift, bias, ls, scale, grad):
    f64 = lambda t: None if t is None else t.double()  # noqa: E731
    return run("torch", f64(q), f64(k), f64(v), window, shift, f64(bias), f64(ls), scale, grad.double())


FP32, FP16, BF16, FP64 = torch.float32, torch.float16, torch.bfloat16, torch.float64

# id: (B, H, W, window, shift, heads, d, cross, mode, bias, dtype)
CASES = {
    # N <= 8: the SMALL path (whole windows per step, CUDA-core products); 2x2 windows
    "8x8-w2-self-dot-fp32": (2, 8, 8, (2, 2), (0, 0), 2, 16, False, "dot", False, FP32),
    "12x12-w2-s1-self-cos-bias-d64-bf16": (3, 12, 12, (2, 2), (1, 1), 2, 64, False, "cos", True, BF16),
    "5x5-w2-s1-pad-self-cos-bias-fp64": (2, 5, 5, (2, 2), (1, 1), 2, 16, False, "cos", True, FP64),
    "3x5-w1x2-s0x1-pad-self-dot-bias-fp32": (2, 3, 5, (1, 2), (0, 1), 2, 16, False, "dot", True, FP32),
    "5x7-w2-s1-pad-cross-cos-bias-fp32": (2, 5, 7, (2, 2), (1, 1), 2, 16, True, "cos", True, FP32),
    "5x7-w2-s1-pad-cross-cos-bias-fp16": (2, 5, 7, (2, 2), (1, 1), 2, 16, True, "cos", True, FP16),
    "6x6-w2-s1-self-dot-bias-bf16": (2, 6, 6, (2, 2), (1, 1), 2, 32, False, "dot", True, BF16),
    # non-square windows: 2x3 (6 tokens in a block of 8) and 4x2, non-power-of-two d
    "6x7-w2x3-s1x2-pad-self-cos-bias-fp32": (1, 6, 7, (2, 3), (1, 2), 3, 16, False, "cos", True, FP32),
    "7x5-w4x2-s2x1-pad-cross-dot-bias-d24-fp16": (2, 7, 5, (4, 2), (2, 1), 2, 24, True, "dot", True, FP16),
    "4x6-w2x3-s1-cross-dot-bias-d8-fp32": (1, 4, 6, (2, 3), (1, 1), 2, 8, True, "dot", True, FP32),
    # N = 16: mask-free (no shift, no padding), edge-window masks (shift), padding only
    "8x8-w4-self-dotscale-bias-fp32": (2, 8, 8, (4, 4), (0, 0), 2, 32, False, "dot_scale", True, FP32),
    "8x8-w4-s2-self-cos-bias-fp32": (1, 8, 8, (4, 4), (2, 2), 2, 32, False, "cos", True, FP32),
    "9x9-w4-s1x3-pad-cross-cos-fp16": (1, 9, 9, (4, 4), (1, 3), 2, 64, True, "cos", False, FP16),
    "10x8-w4-pad-self-dot-d40-fp32": (1, 10, 8, (4, 4), (0, 0), 2, 40, False, "dot", False, FP32),
    # N = 49
    "7x7-w7-self-dot-bias-fp32": (2, 7, 7, (7, 7), (0, 0), 2, 32, False, "dot", True, FP32),
    "9x9-w7-s3-pad-self-cos-bias-d40-fp32": (1, 9, 9, (7, 7), (3, 3), 3, 40, False, "cos", True, FP32),
    "9x9-w7-s3-pad-cross-dot-bias-fp16": (1, 9, 9, (7, 7), (3, 3), 2, 32, True, "dot", True, FP16),
    "10x10-w7-s3-pad-self-cos-bias-bf16": (1, 10, 10, (7, 7), (3, 3), 2, 16, False, "cos", True, BF16),
    # N = 64
    "8x8-w8-self-cos-bias-d64-fp32": (2, 8, 8, (8, 8), (0, 0), 2, 64, False, "cos", True, FP32),
    "12x12-w8-s4-pad-self-dot-bias-fp32": (1, 12, 12, (8, 8), (4, 4), 1, 32, False, "dot", True, FP32),
    "16x16-w8-s4-cross-cos-bias-fp16": (1, 16, 16, (8, 8), (4, 4), 2, 16, True, "cos", True, FP16),
    # 64-token tiles of d >= 32 with a bias gradient: the split backward (dq, then dk and dv; in
    # fp32 too: 8x8-w8-self-cos-bias-d64-fp32 and 12x12-w8-s4-pad-self-dot-bias-fp32 above)
    "16x16-w8-s4-self-cos-bias-d32-bf16": (1, 16, 16, (8, 8), (4, 4), 2, 32, False, "cos", True, BF16),
    "8x8-w8-self-cos-bias-d64-fp16": (1, 8, 8, (8, 8), (0, 0), 2, 64, False, "cos", True, FP16),
    # windows of more than 64 tokens: query blocks of 64 rows
    "13x12-w12-s5x6-pad-self-cos-bias-fp32": (1, 13, 12, (12, 12), (5, 6), 1, 16, False, "cos", True, FP32),
    "16x16-w16-s8-cross-dot-bias-fp32": (1, 16, 16, (16, 16), (8, 8), 1, 32, True, "dot", True, FP32),
    # largest head dim; float64 (rows of padded queries with no key at all: 5x5, window 4, shift 2)
    "4x8-w2x4-s1x2-self-cos-bias-d128-fp16": (1, 4, 8, (2, 4), (1, 2), 2, 128, False, "cos", True, FP16),
    "5x5-w4-s2-pad-self-cos-bias-fp64": (2, 5, 5, (4, 4), (2, 2), 2, 16, False, "cos", True, FP64),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_forward_and_gradients_match_reference(case, poisoned):
    B, H, W, window, shift, nh, d, cross, mode, bias, dtype = CASES[case]
    q, k, v, b, ls, scale = make_inputs(B, H, W, window, nh, d, cross, mode, bias, dtype)
    grad = torch.randn(B, H, W, nh * d).to(dtype)
    o, grads = run("triton", q, k, v, window, shift, b, ls, scale, grad)
    ro, rgrads = reference(q, k, v, window, shift, b, ls, scale, grad)
    assert o.dtype == dtype and o.shape == (B, H, W, nh * d)
    assert_close("o", o, ro, dtype)
    names = ["dq", "dk", "dv"] + (["dbias"] if bias else []) + (["dlogit_scale"] if mode == "cos" else [])
    assert len(grads) == len(names)
    for name, g, rg in zip(names, grads, rgrads):
        assert g.dtype == dtype, name
        assert rg.abs().max() > 0, f"reference gradient {name} vanishes"
        assert_close(name, g, rg, dtype)


@pytest.mark.parametrize("shift", [(0, 0), (1, 1)], ids=["noshift", "shift"])
def test_out_view_writes_only_its_half(shift):
    B, H, W, nh, d = 2, 5, 7, 2, 16
    C = nh * d
    q, k, v, b, _, _ = make_inputs(B, H, W, (2, 2), nh, d, True, "dot", True, FP32)
    buf = torch.full((B, H, W, 2 * C), float("nan"))
    view = buf[..., C:]
    result = ops.window_attention(q, k, v, (2, 2), shift, b, out=view, backend="triton")
    assert result is view
    assert torch.isnan(buf[..., :C]).all()
    expected = ops.window_attention(q.double(), k.double(), v.double(), (2, 2), shift, b.double(), backend="torch")
    assert_close("out", buf[..., C:], expected, FP32)
    # and the left half stays untouched when the right half is written in place with gradients
    buf[..., :C] = 7.0
    ops.window_attention(*(t.detach().clone().requires_grad_() for t in (q, k, v)), (2, 2), shift, b, out=buf[..., C:], backend="triton")
    assert (buf[..., :C] == 7.0).all()


def test_out_view_passes_gradients():
    B, H, W, nh, d = 1, 5, 5, 2, 16
    C = nh * d
    q, k, v, b, _, _ = make_inputs(B, H, W, (2, 2), nh, d, True, "dot", True, FP32)
    grad = torch.randn(B, H, W, 2 * C)

    def loss(backend):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, b)]
        skip = torch.randn(B, H, W, C, generator=torch.Generator().manual_seed(1)).requires_grad_()
        buf = torch.empty(B, H, W, 2 * C)
        buf[..., :C] = skip
        ops.window_attention(*leaves[:3], (2, 2), (1, 1), leaves[3], out=buf[..., C:], backend=backend)
        return torch.autograd.grad((buf.sin() * grad).sum(), leaves + [skip])

    for name, g, rg in zip(["dq", "dk", "dv", "dbias", "dskip"], loss("triton"), loss("torch")):
        assert_close(name, g, rg, FP32)


def test_gradients_are_bitwise_reproducible():
    # 2x2 windows at d = 64: 8 steps of 8 windows per head, 4 backward programs per head walking
    # 2 steps each
    B, H, W, nh, d = 4, 8, 8, 2, 64
    q, k, v, b, ls, _ = make_inputs(B, H, W, (2, 2), nh, d, False, "cos", True, FP32)
    grad = torch.randn(B, H, W, nh * d)
    first = run("triton", q, k, v, (2, 2), (1, 1), b, ls, None, grad)[1]
    second = run("triton", q, k, v, (2, 2), (1, 1), b, ls, None, grad)[1]
    for g1, g2 in zip(first, second):
        assert torch.equal(g1, g2)


@pytest.mark.parametrize("window, shift", [((2, 2), (1, 1)), ((12, 12), (5, 6))], ids=["w2-small", "w12-query-blocks"])
def test_bias_gradient_does_not_depend_on_the_split(window, shift):
    # the partial sums of any number of backward programs add up to the same gradient
    B, H, W, nh, d = 2, 13, 12, 1, 16
    q, k, v, b, ls, _ = make_inputs(B, H, W, window, nh, d, False, "cos", True, FP32)
    do = torch.randn(B, H, W, nh * d)
    args = (do, q, k, v, b, ls, list(window), list(shift), 1.0, True, True)
    ref = wa.window_attention_bwd(*args, num_splits=1)
    for splits in (2, 3, 7):
        got = wa.window_attention_bwd(*args, num_splits=splits)
        for g, r in zip(got, ref):
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)
    # dq, dk, dv do not go through any reduction: bitwise equal whatever the split
    for g, r in zip(got[:3], ref[:3]):
        assert torch.equal(g, r)


@pytest.mark.parametrize(
    "window, shift, d, mode",
    [((3, 5), (1, 2), 16, "cos"), ((8, 8), (4, 4), 32, "cos"), ((7, 7), (3, 3), 16, "dot"), ((12, 12), (5, 6), 16, "cos")],
    ids=["w3x5-empty-slot", "w8-edge-masks", "w7-empty-slots", "w12-query-blocks"],
)
def test_split_backward_gives_the_fused_gradients(window, shift, d, mode, poisoned):
    # the dq pass (with the bias partials) and the dk/dv pass (with the logit-scale partials)
    # compute what the fused pass does, term for term
    B, H, W, nh = 2, 13, 12, 2
    q, k, v, b, ls, scale = make_inputs(B, H, W, window, nh, d, False, mode, True, FP32)
    do = torch.randn(B, H, W, nh * d)
    args = (do, q, k, v, b, ls, list(window), list(shift), scale or d ** -0.5, True, True)
    fused = wa.window_attention_bwd(*args, passes=wa.FUSED_BACKWARD)
    split = wa.window_attention_bwd(*args, passes=wa.SPLIT_BACKWARD)
    for name, g, r in zip(["dq", "dk", "dv", "dbias", "dlogit_scale"], split, fused):
        assert torch.equal(g, r), name
    # two pipelining stages move the loads, not the arithmetic
    prefetched = wa.window_attention_bwd(*args, passes=wa.SPLIT_BACKWARD, num_stages=2)
    for name, g, r in zip(["dq", "dk", "dv", "dbias", "dlogit_scale"], prefetched, split):
        assert torch.equal(g, r), name


@pytest.mark.parametrize("num_stages", [0, 1.5, True])
def test_backward_num_stages_must_be_a_positive_int(num_stages):
    q, k, v, b, ls, _ = make_inputs(1, 8, 8, (8, 8), 1, 16, False, "cos", True, FP32)
    with pytest.raises(ValueError, match="num_stages: expected a positive int"):
        wa.window_attention_bwd(torch.randn(1, 8, 8, 16), q, k, v, b, ls, [8, 8], [0, 0], 1.0, True, True,
                                num_stages=num_stages)


@pytest.mark.parametrize(
    "window, shift, d, mode",
    [((8, 8), (4, 4), 64, "cos"), ((8, 8), (0, 0), 32, "cos"), ((7, 7), (3, 3), 16, "dot"), ((6, 7), (0, 0), 16, "cos")],
    ids=["w8-edge-masks", "w8-unmasked", "w7-empty-slots", "w6x7-padded"],
)
def test_blocked_backward_gives_the_fused_gradients(window, shift, d, mode, poisoned):
    # the dq pass in query blocks (writing each row's lse and delta) and the dk/dv pass in key
    # blocks (reading them): the same gradients up to fp32 rounding (exp2(s - lse) against
    # exp2(s - m) / l, and the logit-scale partials summed in another order)
    B, H, W, nh = 2, 13, 12, 2
    q, k, v, b, ls, scale = make_inputs(B, H, W, window, nh, d, False, mode, True, FP32)
    do = torch.randn(B, H, W, nh * d)
    args = (do, q, k, v, b, ls, list(window), list(shift), scale or d ** -0.5, True, True)
    fused = wa.window_attention_bwd(*args, passes=wa.FUSED_BACKWARD)
    for splits in (1, 3):
        blocked = wa.window_attention_bwd(*args, num_splits=splits, passes=wa.BLOCKED_BACKWARD)
        for name, g, r in zip(["dq", "dk", "dv", "dbias", "dlogit_scale"], blocked, fused):
            assert_close(name, g, r)
    assert torch.equal(wa.window_attention_bwd(*args, num_splits=3, passes=wa.BLOCKED_BACKWARD)[0], blocked[0])


def test_blocked_backward_takes_one_64_token_tile():
    q, k, v, b, ls, _ = make_inputs(1, 12, 12, (12, 12), 1, 16, False, "cos", True, FP32)
    with pytest.raises(ValueError, match="passes: the blocked passes take windows of 33 to 64 tokens"):
        wa.window_attention_bwd(torch.randn(1, 12, 12, 16), q, k, v, b, ls, [12, 12], [0, 0], 1.0, True, True,
                                passes=wa.BLOCKED_BACKWARD)


def test_the_16_bit_backward_is_blocked_where_its_tiles_spill():
    wide, small = wa._plan(2, 16, 16, (8, 8), (4, 4), 64), wa._plan(2, 16, 16, (4, 4), (0, 0), 64)
    arch = {c: device.ARCHITECTURES[c] for c in device.ARCHITECTURES}
    for cap, a in arch.items():
        expected = wa.BLOCKED_BACKWARD if a.name in ("sm_80", "sm_86", "sm_89", "sm_120") else wa.SPLIT_BACKWARD
        for dtype in (BF16, FP16):
            assert wa.backward_passes(wide, 64, dtype, True, cosine=True, arch=a) == expected, (a.name, dtype)
        assert wa.backward_passes(wide, 64, FP32, True, cosine=True, arch=a) == wa.SPLIT_BACKWARD
        assert wa.backward_passes(wide, 64, BF16, True, cosine=False, arch=a) == wa.SPLIT_BACKWARD
        # the split's cosine passes at d = 32 spill on sm_120 only
        at_32 = wa.BLOCKED_BACKWARD if a.name == "sm_120" else wa.SPLIT_BACKWARD
        assert wa.backward_passes(wide, 32, BF16, True, cosine=True, arch=a) == at_32
        assert wa.backward_passes(wide, 16, BF16, True, cosine=True, arch=a) == wa.FUSED_BACKWARD
        assert wa.backward_passes(small, 64, BF16, True, cosine=True, arch=a) == wa.FUSED_BACKWARD
        # the one-pass backward (no bias gradient) where it spills: on sm_120 at d = 64
        one_pass = wa.BLOCKED_BACKWARD if a.name == "sm_120" else wa.FUSED_BACKWARD
        assert wa.backward_passes(wide, 64, BF16, False, cosine=False, arch=a) == one_pass
        assert wa.backward_passes(wide, 64, BF16, False, cosine=True, arch=a) == (expected if a.warp_mma else one_pass)


def test_the_one_pass_backward_of_256_key_tiles_is_split_on_sm_100a():
    # its accumulators overflow sm_100a's tensor memory: Triton compiles that kernel to a trap
    wide = wa._plan(2, 16, 16, (16, 16), (0, 0), 64)
    assert wide.BN == 256
    for cap, a in device.ARCHITECTURES.items():
        one_pass = wa.SPLIT_BACKWARD if a.name == "sm_100a" else wa.FUSED_BACKWARD
        for d in (16, 64):
            assert wa.backward_passes(wide, d, BF16, False, cosine=False, arch=a) == one_pass, (a.name, d)
        assert wa.backward_passes(wide, 64, FP32, False, cosine=False, arch=a) == wa.FUSED_BACKWARD
    mid = wa._plan(2, 20, 20, (10, 10), (0, 0), 64)
    assert mid.BN == 128
    assert wa.backward_passes(mid, 64, BF16, False, arch=device.ARCHITECTURES[(10, 0)]) == wa.FUSED_BACKWARD


def test_backward_passes_split_only_tiles_of_64_tokens_with_a_bias_gradient():
    wide, small = wa._plan(2, 16, 16, (8, 8), (4, 4), 64), wa._plan(2, 8, 8, (4, 4), (0, 0), 64)
    assert wa.backward_passes(wide, 64, BF16, True) == wa.SPLIT_BACKWARD
    assert wa.backward_passes(wide, 32, FP16, True) == wa.SPLIT_BACKWARD
    assert wa.backward_passes(wide, 64, FP32, True) == wa.SPLIT_BACKWARD
    assert wa.backward_passes(wide, 16, BF16, True) == wa.FUSED_BACKWARD
    assert wa.backward_passes(wide, 32, FP32, True) == wa.SPLIT_BACKWARD
    assert wa.backward_passes(wide, 64, FP64, True) == wa.FUSED_BACKWARD
    assert wa.backward_passes(wide, 64, BF16, False) == wa.FUSED_BACKWARD
    assert wa.backward_passes(small, 64, BF16, True) == wa.FUSED_BACKWARD


@pytest.mark.parametrize("window, d", [((2, 2), 32), ((2, 2), 128), ((1, 1), 16), ((2, 3), 64), ((2, 4), 16)])
def test_small_windows_take_the_small_path_without_tile_padding(window, d):
    # tl.dot tiles of 16 tokens would leave a 2x2 window 4 x 4 of their 16 x 16 scores (25%);
    # the SMALL path computes each window's own [N, N] block, N padded to a power of two
    plan = wa._plan(64, 32, 32, window, (1, 1), d)
    N = window[0] * window[1]
    assert plan.path is wa.KernelPath.SMALL
    assert plan.score_fraction() == pytest.approx(N * N / plan.BN**2)
    assert plan.score_fraction() > 0.5
    assert wa._plan(64, 32, 32, (2, 2), (1, 1), d).score_fraction() == 1.0


def test_larger_windows_take_tensor_core_tiles():
    for window in [(3, 3), (4, 4), (7, 7), (8, 8), (12, 12), (16, 16)]:
        plan = wa._plan(8, 48, 48, window, (0, 0), 64)
        assert plan.path is wa.KernelPath.DOT and plan.WPT == 1, window
    assert wa._plan(8, 48, 48, (7, 7), (0, 0), 64).score_fraction() == pytest.approx(49 * 49 / 64**2)


def test_any_input_strides_give_identical_results():
    B, H, W, nh, d = 2, 6, 7, 3, 16
    window, shift = (2, 3), (1, 2)
    q, k, v, b, ls, _ = make_inputs(B, H, W, window, nh, d, False, "cos", True, FP32)
    assert not q.is_contiguous()
    want = ops.window_attention(q.contiguous(), k.contiguous(), v.contiguous(), window, shift, b, ls, backend="triton")
    got = ops.window_attention(q, k, v, window, shift, b, ls, backend="triton")
    assert torch.equal(got, want)
    # a spatially transposed storage, a heads/d-swapped storage, a transposed bias
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)
    kt = k.permute(0, 1, 2, 4, 3).contiguous().permute(0, 1, 2, 4, 3)
    bt = b.transpose(1, 2).contiguous().transpose(1, 2)
    assert torch.equal(ops.window_attention(qt, kt, v, window, shift, bt, ls, backend="triton"), want)


def test_gradcheck_float64():
    q, k, v, b, ls, _ = make_inputs(1, 5, 5, (4, 4), 2, 16, True, "cos", True, FP64)
    inputs = tuple(t.requires_grad_() for t in (q, k, v, b, ls))

    def fn(q, k, v, b, ls):
        return ops.window_attention(q, k, v, (4, 4), (2, 2), b, ls, backend="triton")

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=True)


def test_bad_inputs_raise_clear_errors():
    q = torch.randn(1, 4, 4, 2, 16)
    with pytest.raises(ValueError, match="head dim d = 160"):
        ops.window_attention(*(torch.randn(1, 4, 4, 1, 160),) * 3, (2, 2), backend="triton")
    big = torch.randn(1, 17, 17, 1, 16)
    with pytest.raises(ValueError, match="window_size"):
        ops.window_attention(big, big, big, (17, 17), backend="triton")
    with pytest.raises(ValueError, match="one shape"):
        ops.window_attention(q, q[:, :2], q, (2, 2), backend="triton")
    with pytest.raises(ValueError, match="shift_size"):
        ops.window_attention(q, q, q, (2, 2), (2, 0), backend="triton")
    with pytest.raises(TypeError, match="floating-point"):
        ops.window_attention(q.long(), q.long(), q.long(), (2, 2), backend="triton")
    with pytest.raises(ValueError, match="bias must have shape"):
        ops.window_attention(q, q, q, (2, 2), bias=torch.randn(2, 4, 5), backend="triton")
    with pytest.raises(ValueError, match="float16, bfloat16, float32 and float64"):
        ops.window_attention(*(q.to(torch.float8_e4m3fn),) * 3, (2, 2), backend="triton")


def attention_modules(model):
    return [m for m in model.modules() if isinstance(m, (WindowAttention, WindowCrossAttention))]


def test_xswin_on_triton_matches_torch():
    torch.manual_seed(0)
    # leave the zero-initialised modulators' identity so every path carries signal
    model = randomize_(tiny(XSwin), std=0.02)
    fast = copy.deepcopy(model)
    for m in attention_modules(fast):
        m.backend = "triton"
    assert len(attention_modules(fast)) == 8
    g = torch.Generator().manual_seed(0)
    x, t, y = torch.randn(2, 4, 8, 8, generator=g), torch.randint(0, 1000, (2,), generator=g), torch.tensor([1, 7])
    outs = []
    for m in (model, fast):
        torch.manual_seed(1)  # same stochastic depth and label dropout
        out = m(x, t, y)
        out.square().mean().backward()
        outs.append(out)
    assert_close("output", outs[1], outs[0], FP32)
    for (name, p), pf in zip(model.named_parameters(), fast.parameters()):
        assert (p.grad is None) == (pf.grad is None), name
        if p.grad is not None:
            torch.testing.assert_close(pf.grad, p.grad, rtol=1e-3, atol=1e-5, msg=lambda m: f"{name}: {m}")


def test_torch_compile_swin_block_fullgraph():
    torch.manual_seed(0)
    block = swin_block_on_torch()
    block.attn.backend = "triton"
    assert_compiles_like_eager(block, torch.randn(2, 6, 6, 32, requires_grad=True), torch.randn(2, 16))


def test_torch_compile_out_view_fullgraph():
    B, H, W, nh, d = 1, 4, 6, 2, 16
    C = nh * d
    q, k, v, b, _, _ = make_inputs(B, H, W, (2, 3), nh, d, True, "dot", True, FP32)
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))

    def concat(h, q, k, v):
        buf = torch.empty(B, H, W, 2 * C)
        buf[..., :C] = h
        ops.window_attention(q, k, v, (2, 3), (1, 1), b, out=buf[..., C:], backend="triton")
        return buf.sin()

    h = torch.randn(B, H, W, C, requires_grad=True)
    want = concat(h, q, k, v)
    want_grads = torch.autograd.grad(want.sum(), [h, q, k, v])
    torch._dynamo.reset()
    got = torch.compile(concat, fullgraph=True, backend="aot_eager")(h, q, k, v)
    got_grads = torch.autograd.grad(got.sum(), [h, q, k, v])
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)
