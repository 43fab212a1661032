"""Backend selection of ``xswin_fast.ops`` (DESIGN.md §3): None is automatic (Triton on CUDA or
under ``TRITON_INTERPRET=1``, when a kernel exists; the PyTorch reference otherwise), "torch" and
"triton" force one, and forcing Triton where it cannot run is an error, never a silent fallback.

These tests hold whether or not ``xswin_fast.kernels.IMPLEMENTATIONS`` has real kernels yet.
"""
import pytest
import torch

from naive import single_thread  # noqa: F401 (autouse fixture)
from xswin_fast import kernels, ops
from xswin_fast.ops import dispatch, reference

TRITON_OK, WHY_NOT = dispatch._triton_importable()
needs_triton = pytest.mark.skipif(not TRITON_OK, reason=f"triton unavailable: {WHY_NOT}")


def _window_attention_case():
    q, k, v = (torch.randn(2, 5, 6, 2, 8) for _ in range(3))
    bias = torch.randn(2, 9, 9)
    args = (q, k, v, (3, 3), (1, 1), bias)
    return args, {}, reference.window_attention(q, k, v, (3, 3), (1, 1), bias)


def _modulation_case(op):
    x, y = torch.randn(2, 4, 3, 24), torch.randn(2, 4, 3, 24)
    shift, scale = torch.randn(2, 24), torch.randn(2, 24)
    weight, bias, keep = torch.randn(24), torch.randn(24), torch.tensor([0.0, 2.0])
    args = {
        "modulate": (x, shift, scale),
        "layernorm_modulate": (x, shift, scale),
        "gated_residual": (x, y, scale),
        "modulate_layernorm": (x, shift, scale, weight, bias),
        "residual_layernorm": (x, y, weight, bias, keep),
    }[op]
    ref_args = {
        "layernorm_modulate": args + (1e-6,),
        "modulate_layernorm": args + (1e-5,),
        "residual_layernorm": args + (1e-5,),
    }.get(op, args)
    return args, {}, getattr(reference, op)(*ref_args)


OPS = ["window_attention", "modulate", "layernorm_modulate", "gated_residual", "modulate_layernorm", "residual_layernorm"]


def case(op):
    return _window_attention_case() if op == "window_attention" else _modulation_case(op)


def call(op, args, kwargs, backend):
    return getattr(ops, op)(*args, **kwargs, backend=backend)


@pytest.mark.parametrize("op", OPS)
def test_bogus_backend_raises(op):
    args, kwargs, _ = case(op)
    for bad in ("bogus", "cuda", "Torch", ""):
        with pytest.raises(ValueError, match=r"backend must be None, 'torch' or 'triton'"):
            call(op, args, kwargs, bad)


@pytest.mark.parametrize("op", OPS)
def test_torch_backend_is_the_reference(op):
    args, kwargs, expected = case(op)
    assert torch.equal(call(op, args, kwargs, "torch"), expected)


@pytest.mark.parametrize("op", OPS)
def test_forced_triton_on_cpu(op):
    """No kernel (or no interpreter): a clear RuntimeError. A registered kernel under the
    interpreter: it runs and matches the reference."""
    args, kwargs, expected = case(op)
    runnable = TRITON_OK and op in kernels.IMPLEMENTATIONS and dispatch.interpreter_active()
    if not runnable:
        with pytest.raises(RuntimeError, match=rf"backend='triton' cannot run {op}: "):
            call(op, args, kwargs, "triton")
    else:
        out = call(op, args, kwargs, "triton")
        torch.testing.assert_close(out, expected, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("op", OPS)
def test_forced_triton_without_kernel_names_the_reason(op, monkeypatch):
    monkeypatch.delitem(kernels.IMPLEMENTATIONS, op, raising=False)
    args, kwargs, _ = case(op)
    why = "no Triton kernel is implemented" if TRITON_OK else "triton cannot be imported"
    with pytest.raises(RuntimeError, match=rf"backend='triton' cannot run {op}: {why}"):
        call(op, args, kwargs, "triton")


@needs_triton
@pytest.mark.parametrize("op", OPS)
def test_forced_triton_without_interpreter_names_the_reason(op, monkeypatch):
    monkeypatch.setitem(kernels.IMPLEMENTATIONS, op, _FakeKernel(op))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    args, kwargs, _ = case(op)
    with pytest.raises(RuntimeError, match=r"not on a CUDA device.*TRITON_INTERPRET=1"):
        call(op, args, kwargs, "triton")


@pytest.mark.parametrize("op", OPS)
def test_automatic_backend_without_kernel_is_the_reference(op, monkeypatch):
    monkeypatch.delitem(kernels.IMPLEMENTATIONS, op, raising=False)
    args, kwargs, expected = case(op)
    assert torch.equal(call(op, args, kwargs, None), expected)


@pytest.mark.parametrize("op", OPS)
def test_automatic_backend_on_cpu_without_interpreter_is_the_reference(op, monkeypatch):
    fake = _FakeKernel(op)
    monkeypatch.setitem(kernels.IMPLEMENTATIONS, op, fake)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    args, kwargs, expected = case(op)
    assert torch.equal(call(op, args, kwargs, None), expected)
    assert fake.calls == []


@pytest.mark.parametrize("op", OPS)
def test_automatic_backend_gives_reference_result(op):
    """Whatever is registered today: backend=None on CPU computes the reference function."""
    args, kwargs, expected = case(op)
    torch.testing.assert_close(call(op, args, kwargs, None), expected, rtol=2e-5, atol=2e-5)


class _FakeKernel:
    """Stands in for a Triton implementation: records its calls, returns a recognisable result."""

    def __init__(self, op):
        self.op = op
        self.calls = []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        shape = args[0].shape
        if self.op == "window_attention":
            shape = (*shape[:3], shape[3] * shape[4])
            out = kwargs.get("out")
            if out is not None:
                return out.fill_(7.0)
        return torch.full(shape, 7.0, dtype=args[0].dtype)


@needs_triton
@pytest.mark.parametrize("op", OPS)
def test_automatic_backend_picks_kernel_under_interpreter(op, monkeypatch):
    fake = _FakeKernel(op)
    monkeypatch.setitem(kernels.IMPLEMENTATIONS, op, fake)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    args, kwargs, expected = case(op)

    out = call(op, args, kwargs, None)
    assert len(fake.calls) == 1 and (out == 7.0).all()
    # the kernel receives the validated arguments in the reference's order
    kargs, _ = fake.calls[0]
    assert all(a is b for a, b in zip(kargs, args) if isinstance(b, torch.Tensor))

    out = call(op, args, kwargs, "triton")
    assert len(fake.calls) == 2 and (out == 7.0).all()

    out = call(op, args, kwargs, "torch")
    assert len(fake.calls) == 2
    assert torch.equal(out, expected)


@needs_triton
def test_window_attention_kernel_receives_out_and_normalised_sizes(monkeypatch):
    fake = _FakeKernel("window_attention")
    monkeypatch.setitem(kernels.IMPLEMENTATIONS, "window_attention", fake)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    q, k, v = (torch.randn(1, 4, 4, 2, 8) for _ in range(3))
    buf = torch.full((1, 4, 4, 32), float("nan"))
    logit_scale = torch.zeros(2)
    result = ops.window_attention(q, k, v, [2, 2], [1, 1], None, logit_scale, out=buf[..., 16:])
    (args, kwargs), = fake.calls
    assert args[3] == (2, 2) and args[4] == (1, 1)  # lists become tuples of ints
    assert args[5] is None and args[6] is logit_scale and args[7] is None
    assert kwargs["out"].data_ptr() == buf[..., 16:].data_ptr()
    assert result.data_ptr() == buf[..., 16:].data_ptr()
    assert (buf[..., 16:] == 7.0).all() and torch.isnan(buf[..., :16]).all()


@needs_triton
def test_validation_runs_before_dispatch(monkeypatch):
    fake = _FakeKernel("window_attention")
    monkeypatch.setitem(kernels.IMPLEMENTATIONS, "window_attention", fake)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    q = torch.randn(1, 4, 4, 2, 8)
    with pytest.raises(ValueError, match="shift_size"):
        ops.window_attention(q, q, q, (2, 2), (2, 0))
    assert fake.calls == []


def test_interpreter_flag_is_read_at_call_time(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert dispatch.interpreter_active()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not dispatch.interpreter_active()
    monkeypatch.delenv("TRITON_INTERPRET")
    assert not dispatch.interpreter_active()
