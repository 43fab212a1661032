"""The static traffic model: the kernel's bytes by hand; the reference's modelled bytes (big ops on
meta tensors) against a count of a real CPU run of the reference; SDPA's fused accounting by hand."""
import pytest
import torch

from xswin_fast.op_calls import OpCall, TensorLayout
from xswin_fast.traffic import FusedAttention, Traffic, TrafficCounter, kernel_traffic, reference_traffic, stage_rows

B, H, W, NH, D = 2, 10, 12, 2, 16  # 10 x 12 tokens: 4x4 windows pad both axes


def _layout(shape, dtype=torch.float32, requires_grad=True):
    stride, n = [], 1
    for s in reversed(shape):
        stride.insert(0, n)
        n *= s
    return TensorLayout(tuple(shape), tuple(stride), 0, dtype, requires_grad)


def _attention_call(shift, bias_grad):
    q = _layout((B, H, W, NH, D))
    kwargs = (("bias", _layout((NH, 16, 16), requires_grad=bias_grad)), ("shift_size", shift))
    return OpCall("window_attention", (q, q, q, (4, 4)), kwargs, None, _layout((B, H, W, NH * D), requires_grad=False))


def test_kernel_traffic_is_inputs_and_output_then_gradients():
    call = _attention_call((2, 2), bias_grad=True)
    act, bias = B * H * W * NH * D * 4, NH * 16 * 16 * 4
    assert kernel_traffic(call) == Traffic(fwd=4 * act + bias, bwd=act + (3 * act + bias) + (3 * act + bias))


def _measured(call: OpCall) -> Traffic:
    """Bytes of a real CPU run of the reference on random data, every aten op counted (SDPA with
    the model's fused accounting: torch's CPU kernels give no fused path with a mask gradient)."""
    from xswin_fast.ops import reference

    counts = []
    for _ in range(2):  # steady state: the Swin mask is cached
        args = [a.build(None) if isinstance(a, TensorLayout) else a for a in call.args]
        kwargs = {k: v.build(None) if isinstance(v, TensorLayout) else v for k, v in call.kwargs}
        for t in args + list(kwargs.values()):
            if isinstance(t, torch.Tensor):
                t.data.normal_()
        leaves = [t for t in args + list(kwargs.values()) if isinstance(t, torch.Tensor) and t.requires_grad]
        fwd, bwd = TrafficCounter(), TrafficCounter()
        with FusedAttention(), fwd:
            out = reference.window_attention(*args, **kwargs)
        grad = torch.randn(out.shape)
        with FusedAttention(), bwd:
            torch.autograd.grad(out, leaves, grad)
        counts.append(Traffic(fwd.total, bwd.total))
    return counts[-1]


@pytest.mark.parametrize("shift", [(0, 0), (2, 2)])
@pytest.mark.parametrize("bias_grad", [False, True])
def test_reference_traffic_model_matches_a_real_cpu_run(shift, bias_grad):
    call = _attention_call(shift, bias_grad)
    assert reference_traffic(call) == _measured(call)


def test_sdpa_counts_as_one_fused_kernel():
    q = torch.randn(2, 3, 16, 8, requires_grad=True)
    mask = torch.randn(3, 16, 16)
    counter = TrafficCounter()
    with FusedAttention(), counter:
        o = torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask)
    qkv, lse = 3 * q.numel() * 4, 2 * 3 * 16 * 4
    assert counter.ops["fused sdpa"] == qkv + mask.numel() * 4 + o.numel() * 4 + lse


def test_stage_rows_bound_the_attention_speedup_above_one():
    rows = stage_rows("XSwin-paper", 64, precision="fp32", batch=2)
    attention = [r for r in rows if r.op == "window_attention"]
    assert attention and all(r.bound(False) > 1 and r.bound(True) > 1 for r in attention)
    assert {r.op for r in rows} >= {"window_attention", "modulate", "residual_layernorm"}
