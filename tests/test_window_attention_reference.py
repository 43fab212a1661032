"""``xswin_fast.ops.window_attention`` (backend="torch") against docs/design.md §3.1.

The reference (roll/pad/partition + one SDPA call) is compared with ``naive.naive_window_attention``,
a per-token float64 loop written straight from the numbered semantics, plus hand-derived cases.
"""
import math

import pytest
import torch

from helpers import LOG_100, assert_close
from naive import naive_window_attention
from xswin_fast import ops

pytestmark = pytest.mark.usefixtures("single_thread")

def make_qkv(B, H, W, nh, d, dtype, cross, C_in=12):
    """q, k, v as non-contiguous views of fused projections, like a real attention module.

    self:  one x (B, H, W, C_in) -> one qkv projection (B, H, W, 3, heads, d) -> unbind.
    cross: q projected from the decoder map x, k and v from a different (encoder) map y.
    """
    x = torch.randn(B, H, W, C_in, dtype=torch.float64)
    w_qkv = torch.randn(C_in, 3 * nh * d, dtype=torch.float64) / math.sqrt(C_in)
    qkv = (x @ w_qkv).view(B, H, W, 3, nh, d)
    q, k, v = qkv.unbind(3)
    if cross:
        y = torch.randn(B, H, W, C_in, dtype=torch.float64)
        kv = (y @ w_qkv[:, nh * d:]).view(B, H, W, 2, nh, d)
        k, v = kv.unbind(3)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def make_params(nh, window, mode, dtype=torch.float64):
    N = window[0] * window[1]
    bias = torch.randn(nh, N, N, dtype=dtype) if "bias" in mode else None
    logit_scale = None
    if mode.startswith("cos"):
        # temperatures from just under the clamp (100) down to ~1.6; a single head gets the largest
        logit_scale = torch.linspace(LOG_100 - 0.2, 0.5, nh, dtype=dtype)
    scale = 0.37 if mode == "dot_scale" else None
    return bias, logit_scale, scale


# id: (B, H, W, window, shift, heads, d)
GEOMETRIES = {
    "4x4-w2x2-noshift": (2, 4, 4, (2, 2), (0, 0), 1, 8),
    "4x4-w2x2-shift1x1": (2, 4, 4, (2, 2), (1, 1), 2, 8),
    "5x7-w2x2-pad": (2, 5, 7, (2, 2), (0, 0), 3, 8),
    "5x7-w2x2-pad-shift1x1": (2, 5, 7, (2, 2), (1, 1), 2, 16),
    "6x6-w2x3-shift1x2": (1, 6, 6, (2, 3), (1, 2), 2, 8),
    "7x5-w3x2-pad-shift1x1": (2, 7, 5, (3, 2), (1, 1), 3, 8),
    "5x5-w2x3-pad-shift0x2": (2, 5, 5, (2, 3), (0, 2), 2, 8),
    "5x4-w3x2-pad-shift2x0": (1, 5, 4, (3, 2), (2, 0), 1, 16),
    "8x8-w4x4-shift2x2": (1, 8, 8, (4, 4), (2, 2), 2, 16),
    "9x9-w4x4-pad-shift1x3": (1, 9, 9, (4, 4), (1, 3), 1, 16),
    "7x7-w7x7-noshift": (1, 7, 7, (7, 7), (0, 0), 2, 8),
    "9x9-w7x7-pad-shift3x3": (1, 9, 9, (7, 7), (3, 3), 1, 8),
}
MODES = ["dot", "dot_scale", "dot_bias", "cos", "cos_bias"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("geometry", list(GEOMETRIES), ids=list(GEOMETRIES))
def test_matches_naive(geometry, mode, cross, dtype):
    B, H, W, window, shift, nh, d = GEOMETRIES[geometry]
    q, k, v = make_qkv(B, H, W, nh, d, dtype, cross)
    bias, logit_scale, scale = make_params(nh, window, mode, dtype)
    out = ops.window_attention(q, k, v, window, shift, bias, logit_scale, scale, backend="torch")
    assert out.shape == (B, H, W, nh * d)
    assert out.dtype == dtype
    expected = naive_window_attention(q, k, v, window, shift, bias, logit_scale, scale)
    assert_close("out", out, expected)


HALF_GEOMETRIES = ["4x4-w2x2-shift1x1", "7x5-w3x2-pad-shift1x1", "9x9-w4x4-pad-shift1x3", "7x7-w7x7-noshift"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("mode", ["dot_bias", "cos_bias"])
@pytest.mark.parametrize("geometry", HALF_GEOMETRIES)
def test_half_precision_matches_float64_naive(geometry, mode, dtype):
    B, H, W, window, shift, nh, d = GEOMETRIES[geometry]
    q, k, v = make_qkv(B, H, W, nh, d, dtype, cross=True)
    bias, logit_scale, _ = make_params(nh, window, mode, dtype)
    if logit_scale is not None:
        logit_scale = torch.full((nh,), math.log(10.0), dtype=dtype)  # SwinV2's initial temperature
    out = ops.window_attention(q, k, v, window, shift, bias, logit_scale, backend="torch")
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    assert_close("out", out, naive_window_attention(q, k, v, window, shift, bias, logit_scale))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("mode", ["dot", "cos-T100"])
def test_half_precision_error_is_near_output_rounding(mode, dtype):
    # A float32-accumulating implementation on fp16/bf16 inputs is off by little more than the
    # rounding of its output: compare the op's error with that of the exact result rounded once.
    nh = 3
    q, k, v = make_qkv(2, 8, 8, nh, 16, dtype, cross=True)
    bias = torch.randn(nh, 16, 16, dtype=dtype)
    logit_scale = torch.full((nh,), LOG_100, dtype=dtype) if mode.startswith("cos") else None
    exact = naive_window_attention(q, k, v, (4, 4), (2, 2), bias, logit_scale)
    out = ops.window_attention(q, k, v, (4, 4), (2, 2), bias, logit_scale, backend="torch")
    rounding = (exact.to(dtype).double() - exact).abs().max()
    error = (out.double() - exact).abs().max()
    assert error <= 3 * rounding, f"error {error:.3g} vs output rounding {rounding:.3g}"


# hand-checked cases


def test_hand_computed_single_2x2_window():
    # 1 head, d = 1, so the default scale d ** -0.5 is 1 and scores are q_i * k_j.
    # Tokens in row-major order: k = log(1, 2, 3, 4), v = (10, 20, 30, 40).
    k = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64).log().view(1, 2, 2, 1, 1)
    v = torch.tensor([10.0, 20.0, 30.0, 40.0], dtype=torch.float64).view(1, 2, 2, 1, 1)
    q = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64).view(1, 2, 2, 1, 1)
    out = ops.window_attention(q, k, v, (2, 2), backend="torch")
    # token 0: softmax(log(1..4)) = (1, 2, 3, 4) / 10 -> (10 + 40 + 90 + 160) / 10 = 30
    # tokens 1-3: q = 0 -> uniform -> 25
    expected = torch.tensor([30.0, 25.0, 25.0, 25.0], dtype=torch.float64).view(1, 2, 2, 1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)

    # a bias row of log(4, 3, 2, 1) for query 1 with q = 0: weights (4, 3, 2, 1) / 10 -> 20
    bias = torch.zeros(1, 4, 4, dtype=torch.float64)
    bias[0, 1] = torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64).log()
    out = ops.window_attention(torch.zeros_like(q), k, v, (2, 2), bias=bias, backend="torch")
    expected = torch.tensor([25.0, 20.0, 25.0, 25.0], dtype=torch.float64).view(1, 2, 2, 1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)

    # explicit scale: q0 = 2 with scale 0.5 gives the same scores as q0 = 1 with scale 1
    out = ops.window_attention(2 * q, k, v, (2, 2), scale=0.5, backend="torch")
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([30.0], dtype=torch.float64), rtol=0, atol=1e-12)


def test_hand_computed_cosine():
    # cosine mode with d = 2: q0 = (3, 4) -> (0.6, 0.8); keys (1,0), (0,1), (-1,0), (0,-1);
    # temperature exp(log 2) = 2 -> scores 2 * (0.6, 0.8, -0.6, -0.8)
    q = torch.zeros(1, 2, 2, 1, 2, dtype=torch.float64)
    q[0, 0, 0, 0] = torch.tensor([3.0, 4.0])
    q[0, 0, 1, 0] = q[0, 1, 0, 0] = q[0, 1, 1, 0] = torch.tensor([1.0, 0.0])
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    k = (k * torch.tensor([[5.0], [0.1], [2.0], [7.0]], dtype=torch.float64)).view(1, 2, 2, 1, 2)  # norms don't matter
    v = torch.tensor([[1.0, 0], [0, 1.0], [-1.0, 0], [0, -1.0]], dtype=torch.float64).view(1, 2, 2, 1, 2)
    out = ops.window_attention(q, k, v, (2, 2), logit_scale=torch.tensor([math.log(2.0)], dtype=torch.float64), backend="torch")
    p = torch.softmax(2 * torch.tensor([0.6, 0.8, -0.6, -0.8], dtype=torch.float64), 0)
    torch.testing.assert_close(out[0, 0, 0], torch.stack([p[0] - p[2], p[1] - p[3]]), rtol=0, atol=1e-12)


def _groups(size, window, shift):
    """Hand-derived per-axis groups of original indices that may attend to each other."""
    table = {
        (4, 2, 0): [{0, 1}, {2, 3}],
        # frame rows (0,1) hold original rows (1,2): one region; frame rows (2,3) hold rows (3,0),
        # which lie in regions [P-w, P-s) = {2} and [P-s, P) = {3} of the shifted frame.
        (4, 2, 1): [{1, 2}, {3}, {0}],
        # 5 -> padded 8, shift 2: frame rows 0..3 hold rows (2, 3, 4, pad); frame rows 4..7 hold
        # (pad, pad, 0, 1) of which (pad, pad) is region 1 and (0, 1) region 2.
        (5, 4, 2): [{2, 3, 4}, {0, 1}],
        # 5 -> padded 8, no shift: windows (0..3) and (4, pad, pad, pad)
        (5, 4, 0): [{0, 1, 2, 3}, {4}],
        # 6, window 3, shift 1: frame rows 0..2 hold (1, 2, 3); frame rows 3..5 hold (4, 5, 0),
        # regions [3, 5) and [5, 6).
        (6, 3, 1): [{1, 2, 3}, {4, 5}, {0}],
        (6, 3, 0): [{0, 1, 2}, {3, 4, 5}],
    }
    return table[(size, window, shift)]


@pytest.mark.parametrize(
    "H, W, window, shift",
    [
        (4, 4, (2, 2), (0, 0)),
        (4, 4, (2, 2), (1, 1)),
        (5, 5, (4, 4), (2, 2)),
        (5, 5, (4, 4), (0, 0)),
        (4, 6, (2, 3), (1, 1)),
        (5, 6, (4, 3), (2, 0)),
    ],
    ids=["4x4-w2-noshift", "4x4-w2-shift1", "5x5-w4-pad-shift2", "5x5-w4-pad-noshift", "4x6-w2x3-shift1", "5x6-w4x3-pad-shift2x0"],
)
@pytest.mark.parametrize("mode", ["dot", "cos"])
def test_attended_key_sets(H, W, window, shift, mode):
    # q = k = 0 (or constant in cosine mode) -> uniform weights over the allowed keys; one-hot
    # v per position makes the output the attention distribution over the H*W positions.
    HW = H * W
    v = torch.eye(HW, dtype=torch.float64).view(1, H, W, 1, HW)
    if mode == "dot":
        q, k, logit_scale = torch.zeros_like(v), torch.zeros_like(v), None
    else:
        q, k, logit_scale = torch.ones_like(v), torch.ones_like(v), torch.tensor([1.0], dtype=torch.float64)
    out = ops.window_attention(q, k, v, window, shift, logit_scale=logit_scale, backend="torch")
    weights = out.view(H, W, H, W)
    for gh in _groups(H, window[0], shift[0]):
        for gw in _groups(W, window[1], shift[1]):
            expected = torch.zeros(H, W, dtype=torch.float64)
            for i in gh:
                for j in gw:
                    expected[i, j] = 1.0 / (len(gh) * len(gw))
            for i in gh:
                for j in gw:
                    torch.testing.assert_close(weights[i, j], expected, rtol=0, atol=1e-12)
                    # excluded keys get exactly zero probability, not exp(-100)
                    assert (weights[i, j][expected == 0] == 0).all()


def test_shifted_key_sets_spelled_out():
    # 4x4 map, 2x2 windows, shift 1: a few tokens and exactly which positions they see
    H = W = 4
    v = torch.eye(16, dtype=torch.float64).view(1, H, W, 1, 16)
    out = ops.window_attention(torch.zeros_like(v), torch.zeros_like(v), v, (2, 2), (1, 1), backend="torch")
    seen = lambda i, j: {divmod(int(n), W) for n in torch.nonzero(out[0, i, j]).flatten()}  # noqa: E731
    assert seen(0, 0) == {(0, 0)}
    assert seen(3, 3) == {(3, 3)}
    assert seen(3, 0) == {(3, 0)}
    assert seen(0, 1) == {(0, 1), (0, 2)}
    assert seen(1, 1) == {(1, 1), (1, 2), (2, 1), (2, 2)}
    assert seen(2, 3) == {(1, 3), (2, 3)}


@pytest.mark.parametrize("mode", ["dot", "cos"])
def test_padded_keys_are_excluded(mode):
    # 5x5 map, 4x4 windows, no shift: row 4 / column 4 share windows with padding only. Make the
    # real keys score far below a zero-padded key would: if padding were attended (as torchvision
    # does), it would take almost all the weight.
    B, H, W, nh, d = 2, 5, 5, 2, 8
    q = -3 * torch.ones(B, H, W, nh, d, dtype=torch.float64)
    k = 3 * torch.ones(B, H, W, nh, d, dtype=torch.float64) + 0.1 * torch.randn(B, H, W, nh, d, dtype=torch.float64)
    v = torch.randn(B, H, W, nh, d, dtype=torch.float64)
    logit_scale = torch.full((nh,), 2.0, dtype=torch.float64) if mode == "cos" else None
    out = ops.window_attention(q, k, v, (4, 4), logit_scale=logit_scale, backend="torch").view(B, H, W, nh, d)
    # the corner token is alone among padding: its output is its own value, exactly
    torch.testing.assert_close(out[:, 4, 4], v[:, 4, 4], rtol=0, atol=1e-12)
    # the bottom strip equals attention over the 1x4 map of its real tokens, and likewise the right strip
    strip = ops.window_attention(q[:, 4:5, :4], k[:, 4:5, :4], v[:, 4:5, :4], (1, 4), logit_scale=logit_scale, backend="torch")
    torch.testing.assert_close(out[:, 4:5, :4].reshape(strip.shape), strip, rtol=1e-12, atol=1e-12)
    strip = ops.window_attention(q[:, :4, 4:5], k[:, :4, 4:5], v[:, :4, 4:5], (4, 1), logit_scale=logit_scale, backend="torch")
    torch.testing.assert_close(out[:, :4, 4:5].reshape(strip.shape), strip, rtol=1e-12, atol=1e-12)
    # and the whole map against the naive loop
    expected = naive_window_attention(q, k, v, (4, 4), (0, 0), None, logit_scale)
    torch.testing.assert_close(out.reshape(expected.shape), expected, rtol=1e-10, atol=1e-10)


def test_padding_does_not_leak_into_real_windows():
    # Tokens whose windows hold no padding are unaffected by the map's padded extent: the top-left
    # 4x4 of a 5x5 map (window 4, no shift) equals the same 4x4 map on its own.
    q, k, v = make_qkv(1, 5, 5, 2, 8, torch.float64, cross=True)
    bias = torch.randn(2, 16, 16, dtype=torch.float64)
    full = ops.window_attention(q, k, v, (4, 4), bias=bias, backend="torch")
    crop = ops.window_attention(q[:, :4, :4], k[:, :4, :4], v[:, :4, :4], (4, 4), bias=bias, backend="torch")
    torch.testing.assert_close(full[:, :4, :4], crop, rtol=1e-12, atol=1e-12)


# non-finite values (docs/design.md §3.1): a key a query may not attend to contributes nothing

# id: (geometry, site): the planted token (b, i, j). (0, 0) is alone in its Swin region of the
# corner window when shifted by 1; (1, 3, 4) is a token of sample 1 in an unshifted window.
NONFINITE_SITES = {
    "shifted-corner-region": ("4x4-w2x2-shift1x1", (0, 0, 0)),
    "shifted-padded-region": ("5x7-w2x2-pad-shift1x1", (0, 0, 0)),
    "shifted-4x4-region": ("9x9-w4x4-pad-shift1x3", (0, 0, 1)),
    "unshifted-window-sample1": ("5x7-w2x2-pad", (1, 3, 4)),
    "unmasked-window": ("4x4-w2x2-noshift", (0, 1, 1)),
}


def _plant(q, k, v, where, site, value):
    """Copies of q, k, v with ``value`` written into head 0 of token ``site`` of tensor ``where``."""
    q, k, v = (t.clone() for t in (q, k, v))
    b, i, j = site
    {"q": q, "k": k, "v": v}[where][b, i, j, 0, 0] = value
    return q, k, v


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["q", "k", "v"])
@pytest.mark.parametrize("mode", ["dot_bias", "cos_bias"])
@pytest.mark.parametrize("site", list(NONFINITE_SITES), ids=list(NONFINITE_SITES))
def test_nonfinite_value_stays_in_its_region(site, mode, where, value):
    # The output must equal the naive loop's, non-finite entries included. Outside the planted
    # token's group (the tokens it attends to and is attended by: its Swin region of its window
    # of its sample), every output and every gradient must be finite and equal the naive loop's:
    # the planted value never enters the computation of a query that may not attend to it.
    geometry, token = NONFINITE_SITES[site]
    B, H, W, window, shift, nh, d = GEOMETRIES[geometry]
    clean = make_qkv(B, H, W, nh, d, torch.float64, cross=True)
    bias, logit_scale, scale = make_params(nh, window, mode)
    q, k, v = (t.requires_grad_() for t in _plant(*clean, where, token, value))
    out = ops.window_attention(q, k, v, window, shift, bias, logit_scale, scale, backend="torch")
    expected = naive_window_attention(q, k, v, window, shift, bias, logit_scale, scale)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10, equal_nan=True)
    outside = ~_group_of(token, B, H, W, window, shift)
    assert outside.sum() >= outside.numel() * 3 // 4, "the group is a small part of the batch"
    assert torch.isfinite(expected[outside]).all()
    grad = torch.randn(out.shape, dtype=torch.float64)
    got = torch.autograd.grad((out[outside] * grad[outside]).sum(), [q, k, v])
    want = torch.autograd.grad((expected[outside] * grad[outside]).sum(), [q, k, v])
    for name, g, w in zip("qkv", got, want):
        assert torch.isfinite(w[outside]).all(), f"naive grad of {name} is not finite"
        torch.testing.assert_close(g[outside], w[outside], rtol=1e-10, atol=1e-10, msg=lambda m: f"grad of {name}: {m}")


def _group_of(token, B, H, W, window, shift):
    """(B, H, W) mask of the tokens that ``token`` (b, i, j) attends to, by the naive loop: with
    q = k = 0 its attention weights are uniform over exactly those keys."""
    one_hot = torch.eye(B * H * W, dtype=torch.float64).view(B, H, W, 1, B * H * W)
    zeros = torch.zeros_like(one_hot)
    weights = naive_window_attention(zeros, zeros, one_hot, window, shift)[token]
    return (weights != 0).view(B, H, W)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_nan_query_row_is_nan(dtype):
    # no mask at all: one SDPA call on the CPU returns zeros for the NaN row; the definition NaN
    q, k, v = make_qkv(2, 4, 4, 2, 8, dtype, cross=True)
    q[1, 2, 3, 1, 0] = math.nan
    bias = torch.randn(2, 4, 4, dtype=dtype)
    out = ops.window_attention(q, k, v, (2, 2), bias=bias, backend="torch")
    expected = naive_window_attention(q, k, v, (2, 2), bias=bias)
    nan = torch.isnan(expected)
    assert nan.sum() == 8 and nan[1, 2, 3, 8:].all(), "head 1 of token (1, 2, 3), nothing else"
    assert torch.equal(torch.isnan(out), nan)
    assert_close("out", out.masked_fill(nan, 0), expected.masked_fill(nan, 0))


def test_nonfinite_bias_of_a_masked_pair_is_excluded():
    # pair (3, 0) of a 2x2 window is masked in the shifted corner windows and allowed elsewhere:
    # a NaN there poisons slot 3 of the windows where the pair is allowed, nowhere else
    B, H, W, window, shift, nh, d = GEOMETRIES["4x4-w2x2-shift1x1"]
    q, k, v = make_qkv(B, H, W, nh, d, torch.float64, cross=False)
    bias = torch.randn(nh, 4, 4, dtype=torch.float64)
    bias[0, 3, 0] = math.nan
    out = ops.window_attention(q, k, v, window, shift, bias, backend="torch")
    expected = naive_window_attention(q, k, v, window, shift, bias)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10, equal_nan=True)
    assert 0 < torch.isnan(expected).sum() < expected.numel() // 4


# out=, strides


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("shift", [(0, 0), (1, 1)], ids=["noshift", "shift"])
def test_out_view_of_concat_buffer(shift, dtype):
    B, H, W, nh, d = 2, 5, 7, 2, 8
    C = nh * d
    q, k, v = make_qkv(B, H, W, nh, d, dtype, cross=True)
    bias = torch.randn(nh, 4, 4, dtype=dtype)
    expected = ops.window_attention(q, k, v, (2, 2), shift, bias, backend="torch")
    buf = torch.full((B, H, W, 2 * C), float("nan"), dtype=dtype)
    view = buf[..., C:]
    result = ops.window_attention(q, k, v, (2, 2), shift, bias, out=view, backend="torch")
    assert result is view
    assert result.data_ptr() == buf[..., C:].data_ptr()
    assert torch.equal(buf[..., C:], expected)
    assert torch.isnan(buf[..., :C]).all()


def test_out_view_passes_gradients():
    B, H, W, nh, d = 1, 5, 5, 2, 4
    C = nh * d
    q, k, v = (t.clone().requires_grad_() for t in make_qkv(B, H, W, nh, d, torch.float64, cross=True))
    bias = torch.randn(nh, 4, 4, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(B, H, W, C, dtype=torch.float64)
    o = ops.window_attention(q, k, v, (2, 2), (1, 1), bias, backend="torch")
    expected = torch.autograd.grad((o * grad).sum(), (q, k, v, bias))
    skip = torch.randn(B, H, W, C, dtype=torch.float64)
    buf = torch.empty(B, H, W, 2 * C, dtype=torch.float64)
    buf[..., :C] = skip
    ops.window_attention(q, k, v, (2, 2), (1, 1), bias, out=buf[..., C:], backend="torch")
    got = torch.autograd.grad((buf[..., C:] * grad).sum() + buf[..., :C].sum(), (q, k, v, bias))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["dot_bias", "cos_bias"])
@pytest.mark.parametrize("shift", [(0, 0), (1, 2)], ids=["noshift", "shift"])
def test_strided_views_match_contiguous(shift, mode):
    B, H, W, nh, d = 2, 6, 7, 3, 8
    window = (2, 3)
    bias, logit_scale, _ = make_params(nh, window, mode, torch.float32)
    fused = torch.randn(B, H, W, 3, nh, d)
    q, k, v = fused.unbind(3)
    assert not q.is_contiguous()
    got = ops.window_attention(q, k, v, window, shift, bias, logit_scale, backend="torch")
    want = ops.window_attention(q.contiguous(), k.contiguous(), v.contiguous(), window, shift, bias, logit_scale, backend="torch")
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    # other layouts: a spatially transposed storage, and a heads/d-swapped storage
    qt = q.transpose(1, 2).contiguous().transpose(1, 2)
    kt = k.permute(0, 1, 2, 4, 3).contiguous().permute(0, 1, 2, 4, 3)
    got = ops.window_attention(qt, kt, v, window, shift, bias, logit_scale, backend="torch")
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


# gradients

# id: (H, W, window, shift)
GRAD_GEOMETRIES = {
    "4x4-w2-shift1": (4, 4, (2, 2), (1, 1)),
    "3x5-w3-pad-shift1": (3, 5, (3, 3), (1, 1)),
    "5x5-w4-pad-shift2": (5, 5, (4, 4), (2, 2)),
    "4x5-w2x3-pad-shift1x2": (4, 5, (2, 3), (1, 2)),
}


def grad_case(H, W, window, mode, nh=2, d=3, B=1):
    q, k, v = (t.clone().requires_grad_() for t in make_qkv(B, H, W, nh, d, torch.float64, cross=True))
    bias, logit_scale, _ = make_params(nh, window, mode + "_bias")
    bias.requires_grad_()
    inputs = [q, k, v, bias]
    if logit_scale is not None:
        logit_scale.requires_grad_()
        inputs.append(logit_scale)
    return q, k, v, bias, logit_scale, inputs


@pytest.mark.parametrize("mode", ["dot", "cos"])
@pytest.mark.parametrize("geometry", ["4x4-w2-shift1", "3x5-w3-pad-shift1"])
def test_gradcheck(geometry, mode):
    H, W, window, shift = GRAD_GEOMETRIES[geometry]
    q, k, v, bias, logit_scale, inputs = grad_case(H, W, window, mode)

    def fn(q, k, v, bias, *ls):
        return ops.window_attention(q, k, v, window, shift, bias, ls[0] if ls else None, backend="torch")

    assert torch.autograd.gradcheck(fn, tuple(inputs), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("mode", ["dot", "cos"])
@pytest.mark.parametrize("geometry", list(GRAD_GEOMETRIES))
def test_gradients_match_naive(geometry, mode):
    H, W, window, shift = GRAD_GEOMETRIES[geometry]
    q, k, v, bias, logit_scale, inputs = grad_case(H, W, window, mode, nh=2, d=4, B=2)
    grad = torch.randn(2, H, W, 8, dtype=torch.float64)
    got = torch.autograd.grad((ops.window_attention(q, k, v, window, shift, bias, logit_scale, backend="torch") * grad).sum(), inputs)
    want = torch.autograd.grad((naive_window_attention(q, k, v, window, shift, bias, logit_scale) * grad).sum(), inputs)
    for name, g, w in zip(["q", "k", "v", "bias", "logit_scale"], got, want):
        assert w.abs().sum() > 0, f"naive gradient of {name} vanishes"
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10, msg=lambda m: f"grad of {name}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("mode", ["dot", "cos"])
def test_fully_masked_padded_rows_stay_finite(mode, dtype):
    # 5x5 map, window 4, shift 2: the shifted frame's rows/columns 4 and 5 hold only padding and
    # form a region of their own, so a padded query there has no real key in its region.
    H, W, window, shift = GRAD_GEOMETRIES["5x5-w4-pad-shift2"]
    q, k, v, bias, logit_scale, inputs = grad_case(H, W, window, mode, nh=2, d=4, B=2)
    inputs = [t.detach().to(dtype).requires_grad_() for t in inputs]
    q, k, v, bias = inputs[:4]
    logit_scale = inputs[4] if mode == "cos" else None
    out = ops.window_attention(q, k, v, window, shift, bias, logit_scale, backend="torch")
    assert torch.isfinite(out).all()
    grads = torch.autograd.grad(out.square().sum(), inputs)
    for g in grads:
        assert torch.isfinite(g).all()
    assert_close("out", out, naive_window_attention(q, k, v, window, shift, bias, logit_scale))


def test_logit_scale_is_clamped_at_log_100():
    q, k, v = make_qkv(1, 4, 4, 2, 8, torch.float64, cross=True)
    above = torch.tensor([LOG_100 + 1.0, math.log(10.0)], dtype=torch.float64, requires_grad=True)
    at = torch.tensor([LOG_100, math.log(10.0)], dtype=torch.float64)
    out = ops.window_attention(q, k, v, (2, 2), (1, 1), logit_scale=above, backend="torch")
    torch.testing.assert_close(out, ops.window_attention(q, k, v, (2, 2), (1, 1), logit_scale=at, backend="torch"), rtol=1e-12, atol=1e-12)
    (grad,) = torch.autograd.grad(out.square().sum(), above)
    assert grad[0] == 0
    assert grad[1] != 0
    # far above the clamp: still exactly temperature 100
    huge = torch.tensor([1e4, 1e4], dtype=torch.float64)
    torch.testing.assert_close(
        ops.window_attention(q, k, v, (2, 2), logit_scale=huge, backend="torch"),
        ops.window_attention(q, k, v, (2, 2), logit_scale=torch.full((2,), LOG_100, dtype=torch.float64), backend="torch"),
        rtol=1e-12, atol=1e-12,
    )


# bad inputs


def _qkv(shape=(1, 4, 4, 2, 8), dtype=torch.float32):
    return [torch.randn(shape).to(dtype) for _ in range(3)]


def call(q=None, k=None, v=None, window=(2, 2), shift=(0, 0), **kwargs):
    dq, dk, dv = _qkv()
    return ops.window_attention(
        dq if q is None else q, dk if k is None else k, dv if v is None else v, window, shift, backend="torch", **kwargs
    )


BAD_INPUTS = {
    "q-rank4": (ValueError, r"q must have shape \(B, H, W, heads, d\)", lambda: call(q=torch.randn(1, 4, 4, 16))),
    "k-rank6": (ValueError, r"k must have shape", lambda: call(k=torch.randn(1, 4, 4, 2, 8, 1))),
    "v-shape": (ValueError, r"q, k and v must have one shape", lambda: call(v=torch.randn(1, 4, 4, 2, 4))),
    "k-map-size": (ValueError, r"q, k and v must have one shape", lambda: call(k=torch.randn(1, 4, 6, 2, 8))),
    "dtype-mismatch": (TypeError, r"q, k and v must have one dtype", lambda: call(k=torch.randn(1, 4, 4, 2, 8, dtype=torch.float64))),
    "int-q": (TypeError, r"q must be a floating-point tensor", lambda: call(q=torch.ones(1, 4, 4, 2, 8, dtype=torch.int64))),
    "int-v": (TypeError, r"v must be a floating-point tensor", lambda: call(v=torch.ones(1, 4, 4, 2, 8, dtype=torch.int32))),
    "not-a-tensor": (TypeError, r"q must be a torch.Tensor", lambda: call(q=[[1.0]])),
    "empty": (ValueError, r"q must not be empty", lambda: call(*[torch.randn(0, 4, 4, 2, 8) for _ in range(3)])),
    "shift-eq-window": (ValueError, r"shift_size must satisfy 0 <= shift < window", lambda: call(shift=(2, 0))),
    "shift-gt-window": (ValueError, r"shift_size", lambda: call(window=(2, 3), shift=(1, 3))),
    "negative-shift": (ValueError, r"shift_size", lambda: call(shift=(0, -1))),
    "window-0": (ValueError, r"window_size must be >= 1", lambda: call(window=(0, 2))),
    "window-not-pair": (TypeError, r"window_size must be a pair", lambda: call(window=2)),
    "shift-not-pair": (TypeError, r"shift_size must be a pair", lambda: call(shift=(1, 1, 1))),
    "bias-shape": (ValueError, r"bias must have shape \(heads, N, N\)", lambda: call(bias=torch.randn(2, 4, 5))),
    "bias-heads": (ValueError, r"bias must have shape", lambda: call(bias=torch.randn(3, 4, 4))),
    "bias-int": (TypeError, r"bias must be a floating-point", lambda: call(bias=torch.zeros(2, 4, 4, dtype=torch.long))),
    "logit-scale-shape": (ValueError, r"logit_scale must have shape \(heads,\)", lambda: call(logit_scale=torch.zeros(2, 1))),
    "logit-scale-heads": (ValueError, r"logit_scale must have shape", lambda: call(logit_scale=torch.zeros(3))),
    "scale-and-logit-scale": (ValueError, r"logit_scale, not both", lambda: call(logit_scale=torch.zeros(2), scale=0.5)),
    "scale-nan": (TypeError, r"scale must be a finite float", lambda: call(scale=float("nan"))),
    "scale-tensor": (TypeError, r"scale must be a finite float", lambda: call(scale=torch.tensor(0.5))),
    "out-shape": (ValueError, r"out must have shape \(B, H, W, heads\*d\)", lambda: call(out=torch.empty(1, 4, 4, 2, 8))),
    "out-channels": (ValueError, r"out must have shape", lambda: call(out=torch.empty(1, 4, 4, 15))),
    "out-dtype": (TypeError, r"out must have dtype torch.float32", lambda: call(out=torch.empty(1, 4, 4, 16, dtype=torch.float64))),
    "out-int": (TypeError, r"out must be a floating-point", lambda: call(out=torch.empty(1, 4, 4, 16, dtype=torch.int32))),
    "bias-other-device": (ValueError, r"one device", lambda: call(bias=torch.empty(2, 4, 4, device="meta"))),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_inputs_raise(case):
    exc, match, fn = BAD_INPUTS[case]
    with pytest.raises(exc, match=match):
        fn()
