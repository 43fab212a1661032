"""adaLN ops of ``xswin_fast.ops`` (backend="torch") against docs/design.md §3.2.

Each op is compared with the expression DiT / SwinV2 write inline (LayerNorm spelled out in
``naive.naive_layer_norm``), for (B, L, C) and (B, H, W, C) token layouts.
"""
import pytest
import torch

from helpers import assert_close
from naive import naive_layer_norm, per_sample
from xswin_fast import ops

pytestmark = pytest.mark.usefixtures("single_thread")

# id: x shape (B, tokens..., C)
SHAPES = {
    "B1-L7-C96": (1, 7, 96),
    "B3-L5-C192": (3, 5, 192),
    "B2-H3W5-C96": (2, 3, 5, 96),
    "B1-H4W4-C48": (1, 4, 4, 48),
    "B2-L1-C7": (2, 1, 7),
    "B2-D2H2W3-C24": (2, 2, 2, 3, 24),
}


def tensors(shape, dtype, *, with_y=False):
    B, C = shape[0], shape[-1]
    x = (torch.randn(shape, dtype=torch.float64) * 2 + 0.5).to(dtype)
    shift, scale, gate = (torch.randn(B, C, dtype=torch.float64).to(dtype) for _ in range(3))
    y = torch.randn(shape, dtype=torch.float64).to(dtype) if with_y else None
    return x, shift, scale, gate, y


DTYPES = pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["fp32", "fp64", "bf16"]
)
SHAPE = pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))


@DTYPES
@SHAPE
def test_modulate(shape, dtype):
    x, shift, scale, _, _ = tensors(shape, dtype)
    out = ops.modulate(x, shift, scale, backend="torch")
    xd, sd, cd = x.double(), shift.double(), scale.double()
    if x.dim() == 3:  # DiT's spelling for (B, L, C)
        expected = xd * (1 + cd.unsqueeze(1)) + sd.unsqueeze(1)
    else:
        expected = xd * (1 + per_sample(cd, xd)) + per_sample(sd, xd)
    assert out.dtype == dtype
    assert_close("modulate", out, expected)


@DTYPES
@SHAPE
def test_layernorm_modulate(shape, dtype):
    x, shift, scale, _, _ = tensors(shape, dtype)
    out = ops.layernorm_modulate(x, shift, scale, backend="torch")
    xd = x.double()
    ln = naive_layer_norm(xd, 1e-6)
    expected = ln * (1 + per_sample(scale.double(), xd)) + per_sample(shift.double(), xd)
    assert out.dtype == dtype
    assert_close("layernorm_modulate", out, expected)


def test_layernorm_modulate_eps():
    # a constant row normalises to 0 for any eps; a two-valued row (a, b) to ±|a-b|/2 / sqrt((a-b)^2/4 + eps)
    x = torch.tensor([[[1.0, 3.0, 1.0, 3.0]]], dtype=torch.float64)
    zero = torch.zeros(1, 4, dtype=torch.float64)
    for eps in (1e-6, 0.5, 3.0):
        out = ops.layernorm_modulate(x, zero, zero, eps=eps, backend="torch")
        value = 1.0 / (1.0 + eps) ** 0.5
        torch.testing.assert_close(out, torch.tensor([[[-value, value, -value, value]]], dtype=torch.float64))


@DTYPES
@SHAPE
def test_gated_residual(shape, dtype):
    x, _, _, gate, y = tensors(shape, dtype, with_y=True)
    out = ops.gated_residual(x, y, gate, backend="torch")
    xd = x.double()
    gy = per_sample(gate.double(), xd) * y.double()
    assert out.dtype == dtype
    assert_close("gated_residual", out, xd + gy)


@DTYPES
@SHAPE
@pytest.mark.parametrize("affine", [False, True], ids=["noaffine", "affine"])
def test_modulate_layernorm(shape, dtype, affine):
    x, shift, scale, _, _ = tensors(shape, dtype)
    C = shape[-1]
    weight = torch.randn(C, dtype=torch.float64).to(dtype) if affine else None
    bias = torch.randn(C, dtype=torch.float64).to(dtype) if affine else None
    out = ops.modulate_layernorm(x, shift, scale, weight, bias, backend="torch")
    xd = x.double()
    modulated = xd * (1 + per_sample(scale.double(), xd)) + per_sample(shift.double(), xd)
    expected = naive_layer_norm(
        modulated, 1e-5, None if weight is None else weight.double(), None if bias is None else bias.double()
    )
    assert out.dtype == dtype
    assert_close("modulate_layernorm", out, expected)


@DTYPES
@SHAPE
@pytest.mark.parametrize("affine", [False, True], ids=["noaffine", "affine"])
@pytest.mark.parametrize("keep", [None, "drop-path"], ids=["nokeep", "keep"])
def test_residual_layernorm(shape, dtype, affine, keep):
    x, _, _, _, y = tensors(shape, dtype, with_y=True)
    B, C = shape[0], shape[-1]
    weight = torch.randn(C, dtype=torch.float64).to(dtype) if affine else None
    bias = torch.randn(C, dtype=torch.float64).to(dtype) if affine else None
    if keep is not None:  # stochastic depth: 0 or 1 / (1 - p)
        keep = (torch.arange(B) % 2 == 0).to(dtype) / 0.75
    out = ops.residual_layernorm(x, y, weight, bias, keep, backend="torch")
    yd = naive_layer_norm(
        y.double(), 1e-5, None if weight is None else weight.double(), None if bias is None else bias.double()
    )
    if keep is not None:
        yd = yd * keep.double().view(B, *([1] * (len(shape) - 1)))
    assert out.dtype == dtype
    assert_close("residual_layernorm", out, x.double() + yd)


def test_residual_layernorm_dropped_sample_is_identity():
    x, _, _, _, y = tensors((2, 5, 96), torch.float32, with_y=True)
    out = ops.residual_layernorm(x, y, keep=torch.tensor([0.0, 1.0]), backend="torch")
    assert torch.equal(out[0], x[0])


def test_zero_modulation_is_identity():
    # adaLN-Zero initialisation: shift = scale = gate = 0
    x, _, _, _, y = tensors((2, 3, 5, 96), torch.float32, with_y=True)
    zero = torch.zeros(2, 96)
    assert torch.equal(ops.modulate(x, zero, zero, backend="torch"), x)
    assert torch.equal(ops.gated_residual(x, y, zero, backend="torch"), x)


def test_strided_inputs():
    # x a non-contiguous view (e.g. a channel slice of a wider buffer), shift/scale as chunks of
    # one adaLN projection (B, 6C) like DiT's .chunk(6, dim=1)
    buf = torch.randn(2, 4, 5, 2 * 96, dtype=torch.float64)
    x = buf[..., 96:]
    shift, scale, gate, *_ = torch.randn(2, 6 * 96, dtype=torch.float64).chunk(6, dim=1)
    assert not x.is_contiguous()
    torch.testing.assert_close(ops.modulate(x, shift, scale, backend="torch"), ops.modulate(x.contiguous(), shift.contiguous(), scale.contiguous(), backend="torch"))
    torch.testing.assert_close(
        ops.layernorm_modulate(x, shift, scale, backend="torch"),
        ops.layernorm_modulate(x.contiguous(), shift.contiguous(), scale.contiguous(), backend="torch"),
    )
    torch.testing.assert_close(
        ops.gated_residual(x, x, gate, backend="torch"), x + gate[:, None, None] * x
    )


# gradients (float64 gradcheck w.r.t. every tensor argument)

GRAD_SHAPES = {"B2-L3-C6": (2, 3, 6), "B1-H2W3-C5": (1, 2, 3, 5)}


def _req(*ts):
    return tuple(t.detach().clone().requires_grad_() for t in ts)


@pytest.mark.parametrize("shape", list(GRAD_SHAPES.values()), ids=list(GRAD_SHAPES))
@pytest.mark.parametrize("op", ["modulate", "layernorm_modulate", "gated_residual", "modulate_layernorm", "residual_layernorm"])
def test_gradcheck(op, shape):
    B, C = shape[0], shape[-1]
    x, shift, scale, gate, y = tensors(shape, torch.float64, with_y=True)
    weight, bias = torch.randn(C, dtype=torch.float64), torch.randn(C, dtype=torch.float64)
    keep = torch.rand(B, dtype=torch.float64) + 0.5
    if op == "modulate":
        args = _req(x, shift, scale)
        fn = lambda x, s, c: ops.modulate(x, s, c, backend="torch")  # noqa: E731
    elif op == "layernorm_modulate":
        args = _req(x, shift, scale)
        fn = lambda x, s, c: ops.layernorm_modulate(x, s, c, eps=1e-3, backend="torch")  # noqa: E731
    elif op == "gated_residual":
        args = _req(x, y, gate)
        fn = lambda x, y, g: ops.gated_residual(x, y, g, backend="torch")  # noqa: E731
    elif op == "modulate_layernorm":
        args = _req(x, shift, scale, weight, bias)
        fn = lambda x, s, c, w, b: ops.modulate_layernorm(x, s, c, w, b, eps=1e-3, backend="torch")  # noqa: E731
    else:
        args = _req(x, y, weight, bias, keep)
        fn = lambda x, y, w, b, k: ops.residual_layernorm(x, y, w, b, k, eps=1e-3, backend="torch")  # noqa: E731
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, rtol=1e-5)
    grads = torch.autograd.grad(fn(*args).square().sum(), args)
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


# bad inputs

X = lambda: torch.randn(2, 5, 8)  # noqa: E731
BC = lambda B=2, C=8, **kw: torch.randn(B, C, **kw)  # noqa: E731

BAD_INPUTS = {
    "modulate-shift-C": (ValueError, r"shift must have shape \(B, C\) = \(2, 8\)", lambda: ops.modulate(X(), BC(C=7), BC(), backend="torch")),
    "modulate-shift-rank3": (ValueError, r"shift must have shape \(B, C\)", lambda: ops.modulate(X(), torch.randn(2, 1, 8), BC(), backend="torch")),
    "modulate-scale-batch": (ValueError, r"scale must have shape \(B, C\) = \(2, 8\)", lambda: ops.modulate(X(), BC(), BC(B=3), backend="torch")),
    "modulate-scale-batch1": (ValueError, r"scale must have shape", lambda: ops.modulate(X(), BC(), BC(B=1), backend="torch")),
    "modulate-int-x": (TypeError, r"x must be a floating-point", lambda: ops.modulate(torch.ones(2, 5, 8, dtype=torch.long), BC(), BC(), backend="torch")),
    "modulate-int-shift": (TypeError, r"shift must be a floating-point", lambda: ops.modulate(X(), torch.ones(2, 8, dtype=torch.int32), BC(), backend="torch")),
    "modulate-x-rank1": (ValueError, r"x must have shape \(B, \.\.\., C\)", lambda: ops.modulate(torch.randn(8), BC(), BC(), backend="torch")),
    "modulate-x-not-tensor": (TypeError, r"x must be a torch.Tensor", lambda: ops.modulate([1.0, 2.0], BC(), BC(), backend="torch")),
    "ln-modulate-shift-C": (ValueError, r"shift must have shape", lambda: ops.layernorm_modulate(X(), BC(C=4), BC(), backend="torch")),
    "ln-modulate-scale-batch": (ValueError, r"scale must have shape", lambda: ops.layernorm_modulate(X(), BC(), BC(B=4), backend="torch")),
    "ln-modulate-int-x": (TypeError, r"x must be a floating-point", lambda: ops.layernorm_modulate(torch.ones(2, 5, 8, dtype=torch.int64), BC(), BC(), backend="torch")),
    "ln-modulate-x-rank1": (ValueError, r"x must have shape", lambda: ops.layernorm_modulate(torch.randn(8), BC(), BC(), backend="torch")),
    "ln-modulate-eps-0": (ValueError, r"eps must be a finite float > 0", lambda: ops.layernorm_modulate(X(), BC(), BC(), eps=0.0, backend="torch")),
    "ln-modulate-eps-neg": (ValueError, r"eps must be a finite float > 0", lambda: ops.layernorm_modulate(X(), BC(), BC(), eps=-1e-6, backend="torch")),
    "ln-modulate-eps-str": (TypeError, r"eps must be a float", lambda: ops.layernorm_modulate(X(), BC(), BC(), eps="1e-6", backend="torch")),
    "gated-y-shape": (ValueError, r"y must have x's shape", lambda: ops.gated_residual(X(), torch.randn(2, 4, 8), BC(), backend="torch")),
    "gated-y-rank1": (ValueError, r"y must have shape \(B, \.\.\., C\)", lambda: ops.gated_residual(X(), torch.randn(8), BC(), backend="torch")),
    "gated-gate-batch": (ValueError, r"gate must have shape \(B, C\)", lambda: ops.gated_residual(X(), X(), BC(B=1), backend="torch")),
    "gated-int-y": (TypeError, r"y must be a floating-point", lambda: ops.gated_residual(X(), torch.ones(2, 5, 8, dtype=torch.int64), BC(), backend="torch")),
    "mod-ln-weight-shape": (ValueError, r"weight must have shape \(C,\) = \(8,\)", lambda: ops.modulate_layernorm(X(), BC(), BC(), torch.randn(7), backend="torch")),
    "mod-ln-bias-shape": (ValueError, r"bias must have shape \(C,\)", lambda: ops.modulate_layernorm(X(), BC(), BC(), None, torch.randn(1, 8), backend="torch")),
    "mod-ln-shift-batch": (ValueError, r"shift must have shape", lambda: ops.modulate_layernorm(X(), BC(B=3), BC(), backend="torch")),
    "mod-ln-eps-0": (ValueError, r"eps must be a finite float > 0", lambda: ops.modulate_layernorm(X(), BC(), BC(), eps=0, backend="torch")),
    "res-ln-y-shape": (ValueError, r"y must have x's shape", lambda: ops.residual_layernorm(X(), torch.randn(2, 5, 4), backend="torch")),
    "res-ln-weight-shape": (ValueError, r"weight must have shape \(C,\)", lambda: ops.residual_layernorm(X(), X(), torch.randn(9), backend="torch")),
    "res-ln-bias-int": (TypeError, r"bias must be a floating-point", lambda: ops.residual_layernorm(X(), X(), None, torch.zeros(8, dtype=torch.long), backend="torch")),
    "res-ln-keep-shape": (ValueError, r"keep must have shape \(B,\) = \(2,\)", lambda: ops.residual_layernorm(X(), X(), keep=torch.ones(3), backend="torch")),
    "res-ln-keep-rank2": (ValueError, r"keep must have shape \(B,\)", lambda: ops.residual_layernorm(X(), X(), keep=torch.ones(2, 1), backend="torch")),
    "res-ln-keep-int": (TypeError, r"keep must be a floating-point", lambda: ops.residual_layernorm(X(), X(), keep=torch.ones(2, dtype=torch.long), backend="torch")),
    "res-ln-x-rank1": (ValueError, r"x must have shape", lambda: ops.residual_layernorm(torch.randn(8), torch.randn(8), backend="torch")),
    "res-ln-eps-neg": (ValueError, r"eps must be a finite float > 0", lambda: ops.residual_layernorm(X(), X(), eps=-1.0, backend="torch")),
    "modulate-other-device": (ValueError, r"one device", lambda: ops.modulate(X(), BC(device="meta"), BC(), backend="torch")),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_inputs_raise(case):
    exc, match, fn = BAD_INPUTS[case]
    with pytest.raises(exc, match=match):
        fn()
