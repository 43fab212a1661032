"""The fused adaLN kernels read every input through its strides and keep samples apart (run through
Triton's interpreter).

Strides: shift, scale and gate as column slices of one wider projection, weight, bias and keep
as strided slices, token tensors as spatial slices: the results equal those of packed copies.
Isolation: an Inf or NaN in one sample leaves the output and the per-sample gradients of the other
samples exactly as in the clean run.
"""
import math

import pytest
import torch

from helpers import strided
from xswin_fast import ops

OPS = ["modulate", "layernorm_modulate", "gated_residual", "modulate_layernorm", "residual_layernorm"]
# the tensor arguments of each op, in order; "B" marks a per-sample one
ARGS = {
    "modulate": ("x", "shift", "scale"),
    "layernorm_modulate": ("x", "shift", "scale"),
    "gated_residual": ("x", "y", "gate"),
    "modulate_layernorm": ("x", "shift", "scale", "weight", "bias"),
    "residual_layernorm": ("x", "y", "weight", "bias", "keep"),
}


def make(op, B=3, H=4, W=5, C=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = dict(x=(B, H, W, C), y=(B, H, W, C), shift=(B, C), scale=(B, C), gate=(B, C),
                  weight=(C,), bias=(C,), keep=(B,))
    return {n: torch.randn(shapes[n], generator=g) * 0.5 + (1.0 if n == "keep" else 0.0) for n in ARGS[op]}


def forward_backward(op, tensors, do):
    # detach keeps the strides (clone would pack a strided view)
    leaves = {n: t.detach().requires_grad_() for n, t in tensors.items()}
    out = getattr(ops, op)(*leaves.values(), backend="triton")
    grads = torch.autograd.grad(out, list(leaves.values()), do)
    return out.detach(), dict(zip(leaves, grads))


@pytest.mark.parametrize("op", OPS)
def test_strided_inputs_give_the_packed_result(op):
    tensors = make(op)
    do = torch.randn(tensors["x"].shape)
    want_out, want_grads = forward_backward(op, tensors, do)
    for name, t in tensors.items():
        for dim in range(t.dim()):
            view = dict(tensors, **{name: strided(t, dim)})
            got_out, got_grads = forward_backward(op, view, do)
            torch.testing.assert_close(got_out, want_out, rtol=1e-6, atol=1e-6, msg=lambda m: f"{name} dim {dim}: {m}")
            for g in want_grads:
                torch.testing.assert_close(got_grads[g], want_grads[g], rtol=1e-6, atol=1e-6,
                                           msg=lambda m: f"{name} dim {dim}, d{g}: {m}")


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("op", OPS)
def test_a_non_finite_sample_stays_in_its_sample(op, value):
    tensors = make(op)
    do = torch.randn(tensors["x"].shape)
    clean_out, clean_grads = forward_backward(op, tensors, do)
    token = "y" if "y" in tensors else "x"
    poisoned = dict(tensors, **{token: tensors[token].clone()})
    poisoned[token][1, 2, 3, 5] = value
    out, grads = forward_backward(op, poisoned, do)
    others = [0, 2]
    assert torch.equal(out[others], clean_out[others])
    for name in tensors:
        if name in ("x", "y", "shift", "scale", "gate", "keep"):
            assert torch.equal(grads[name][others], clean_grads[name][others]), name
    assert not torch.isfinite(out[1]).all() or not torch.isfinite(grads[token][1]).all()
