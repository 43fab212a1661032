"""Bad arguments of the ops on both backends: window/shift sizes that are not ints, an ``out`` that
shares memory with an input or overlaps itself, a non-finite or non-positive eps. Each raises a
TypeError/ValueError naming the argument before any computation; the legitimate neighbour of each
case (a separate half of a concatenation buffer, an int eps) still works. Plus ``make bench``'s
thread policy."""
import math
import os
import subprocess
import sys

import pytest
import torch

from xswin_fast import ops

pytestmark = pytest.mark.usefixtures("single_thread")

BACKENDS = ("torch", "triton")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def qkv(B=1, H=4, W=4, nh=2, d=8):
    return [torch.randn(B, H, W, nh, d) for _ in range(3)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "name, window, shift",
    [
        ("window_size", (2.5, 2), (0, 0)),
        ("window_size", (2.0, 2), (0, 0)),
        ("window_size", ("2", 2), (0, 0)),
        ("window_size", (True, 2), (0, 0)),
        ("shift_size", (2, 2), (1.0, 0)),
        ("shift_size", (2, 2), (False, 0)),
        ("shift_size", (2, 2), "10"),
    ],
)
def test_window_and_shift_sizes_must_be_ints(backend, name, window, shift):
    q, k, v = qkv()
    with pytest.raises(TypeError, match=rf"{name} must be a pair of ints"):
        ops.window_attention(q, k, v, window, shift, backend=backend)


def _overlapping_outs():
    """(id, build): build(q) returns (q, k, v, out) with out overlapping an input or itself."""
    def shifted_view_of_q(_):
        buf = torch.randn(1 * 4 * 4 * 16 + 3)
        q = buf[:256].view(1, 4, 4, 2, 8)
        return q, *qkv()[1:], buf[3:].view(1, 4, 4, 16)

    def q_itself(_):
        q, k, v = qkv()
        return q, k, v, q.view(1, 4, 4, 16)

    def v_strided(_):
        q, k, v = qkv()
        return q, k, v, torch.as_strided(v, (1, 4, 4, 16), (256, 64, 16, 1), 0)

    def interleaved_channels_of_q(_):
        buf = torch.randn(1, 4, 4, 32)
        return buf[..., 16:].unflatten(-1, (2, 8)), *qkv()[1:], buf[..., 8:24]

    def expand(_):
        q, k, v = qkv()
        return q, k, v, torch.zeros(1, 1, 1, 16).expand(1, 4, 4, 16)

    def self_overlapping(_):
        q, k, v = qkv()
        return q, k, v, torch.as_strided(torch.zeros(200), (1, 4, 4, 16), (256, 8, 2, 1))

    return {"shifted-view-of-q": shifted_view_of_q, "q-itself": q_itself, "as-strided-over-v": v_strided,
            "interleaved-channels-of-q": interleaved_channels_of_q,
            "stride-0-expand": expand, "self-overlapping-as-strided": self_overlapping}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(_overlapping_outs()))
def test_out_overlapping_an_input_or_itself_is_refused(backend, case):
    q, k, v, out = _overlapping_outs()[case](None)
    before = [t.clone() for t in (q, k, v)]
    with pytest.raises(ValueError, match=r"^out must not"):
        ops.window_attention(q, k, v, (2, 2), (1, 1), out=out, backend=backend)
    for t, b in zip((q, k, v), before):
        assert torch.equal(t, b)  # refused before anything was written


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_as_half_of_a_concat_buffer_holding_q_is_accepted(backend):
    # the halves of one buffer interleave in memory but share no element
    buf = torch.randn(1, 4, 4, 32)
    q = buf[..., 16:].unflatten(-1, (2, 8))
    k, v = qkv()[1:]
    expected = ops.window_attention(q.clone(), k, v, (2, 2), (1, 1), backend="torch")
    out = ops.window_attention(q, k, v, (2, 2), (1, 1), out=buf[..., :16], backend=backend)
    assert out.data_ptr() == buf.data_ptr()
    torch.testing.assert_close(buf[..., :16], expected, rtol=1e-4, atol=1e-5)


def _adaln_calls(eps):
    torch.manual_seed(0)
    x, y = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    s, c = torch.randn(2, 8), torch.randn(2, 8)
    return {
        "layernorm_modulate": lambda b: ops.layernorm_modulate(x, s, c, eps=eps, backend=b),
        "modulate_layernorm": lambda b: ops.modulate_layernorm(x, s, c, eps=eps, backend=b),
        "residual_layernorm": lambda b: ops.residual_layernorm(x, y, eps=eps, backend=b),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", list(_adaln_calls(1e-5)))
@pytest.mark.parametrize("eps", [math.inf, math.nan, -math.inf, 0.0, -1e-5])
def test_eps_must_be_a_finite_positive_float(backend, op, eps):
    with pytest.raises(ValueError, match=r"eps must be a finite float > 0"):
        _adaln_calls(eps)[op](backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", list(_adaln_calls(1e-5)))
@pytest.mark.parametrize("eps", [True, "1e-5", None, torch.tensor(1e-5)])
def test_eps_must_be_a_number(backend, op, eps):
    with pytest.raises(TypeError, match=r"eps must be a float"):
        _adaln_calls(eps)[op](backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", list(_adaln_calls(1e-5)))
def test_eps_as_an_int_is_accepted(backend, op):
    torch.testing.assert_close(_adaln_calls(1)[op](backend), _adaln_calls(1.0)[op](backend))


def _bench_header(*args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "pytest", "benchmarks/test_bench_adaln.py", "--collect-only",
           "-p", "no:cacheprovider", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_bench_sets_the_thread_count_once_from_bench_threads():
    run = _bench_header("--bench-threads", "1")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "CPU threads: 1 (--bench-threads 1)" in run.stdout
    bad = _bench_header("--bench-threads", "-2")
    assert bad.returncode != 0 and "--bench-threads" in bad.stderr


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", ["modulate_layernorm", "residual_layernorm"])
@pytest.mark.parametrize("dtypes", [("weight", torch.float16, None), ("bias", torch.float32, torch.bfloat16)],
                         ids=["fp16-weight-on-fp32", "bf16-bias-beside-fp32-weight"])
def test_affine_of_another_dtype_is_refused(op, dtypes, backend):
    """A float16 weight on a float32 tensor (torch: 'mixed dtype (CPU)'), or weight and bias of
    two dtypes: a TypeError naming the argument."""
    name, weight_dtype, bias_dtype = dtypes
    x, y, shift, scale = torch.randn(2, 5, 8), torch.randn(2, 5, 8), torch.randn(2, 8), torch.randn(2, 8)
    weight = torch.randn(8, dtype=weight_dtype)
    bias = None if bias_dtype is None else torch.randn(8, dtype=bias_dtype)
    if op == "modulate_layernorm":
        call = lambda w, b: ops.modulate_layernorm(x, shift, scale, weight=w, bias=b, backend=backend)  # noqa: E731
    else:
        call = lambda w, b: ops.residual_layernorm(x, y, weight=w, bias=b, backend=backend)  # noqa: E731
    with pytest.raises(TypeError, match=rf"{name} must have the dtype of the tensor it normalises \(torch.float32\)"):
        call(weight, bias)
    call(weight.float(), None if bias is None else bias.float())  # the good neighbour


def test_half_input_with_float32_affine_runs():
    """LayerNorm's mixed precision: a bfloat16 tensor with float32 weight and bias."""
    x, y = torch.randn(2, 5, 8, dtype=torch.bfloat16), torch.randn(2, 5, 8, dtype=torch.bfloat16)
    weight, bias = torch.randn(8), torch.randn(8)
    out = ops.residual_layernorm(x, y, weight, bias, backend="torch")
    assert out.dtype == torch.bfloat16


@pytest.mark.parametrize("backend", BACKENDS)
def test_window_larger_than_the_map_is_refused(backend):
    """(1024, 1024) windows on a 5 x 7 map would pad it to 2^20 tokens (a 2^40-entry mask): refused
    before any allocation, naming window_size and the map; the window clamped to the map runs."""
    q, k, v = qkv(B=1, H=5, W=7)
    for window in ((1024, 1024), (6, 7), (5, 8)):
        with pytest.raises(ValueError, match=r"window_size \(\d+, \d+\) must fit the map \(H, W\) = \(5, 7\)"):
            ops.window_attention(q, k, v, window, backend=backend)
    torch.testing.assert_close(ops.window_attention(q, k, v, (5, 7), backend=backend),
                               ops.reference.window_attention(q, k, v, (5, 7)), rtol=2e-5, atol=2e-5)
