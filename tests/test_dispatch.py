"""Backend selection of ``xswin_fast.ops`` (docs/design.md §3): None is automatic (Triton on CUDA or
under ``TRITON_INTERPRET=1`` when the kernel supports the inputs; the PyTorch reference
otherwise), "torch" and "triton" force one, and forcing Triton where it cannot run is an error,
never a silent fallback: RuntimeError for the environment, ValueError naming the kernel's limit.
"""
import pytest
import torch

from xswin_fast import ops
from xswin_fast.ops import dispatch, reference

pytestmark = pytest.mark.usefixtures("single_thread")

WHY_NOT = dispatch._TRITON_UNAVAILABLE
TRITON_OK = WHY_NOT is None
needs_triton = pytest.mark.skipif(not TRITON_OK, reason=f"triton unavailable: {WHY_NOT}")


def interpreter(monkeypatch, active: bool) -> None:
    """The dispatcher as if the kernels had been imported with TRITON_INTERPRET=1 (or not), the way
    compile_check's ``triton_on_cpu`` switches it."""
    monkeypatch.setattr(dispatch, "interpreter_active", lambda: active)


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


def kernel_module(op):
    """The kernel module whose entry point ``op`` the op of ``xswin_fast.ops`` calls."""
    from xswin_fast.kernels import adaln, window_attention

    return window_attention if op == "window_attention" else adaln


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
    """No interpreter: a clear RuntimeError. Under the interpreter: the kernel runs and matches the
    reference."""
    args, kwargs, expected = case(op)
    runnable = TRITON_OK and dispatch.interpreter_active()
    if not runnable:
        with pytest.raises(RuntimeError, match=rf"backend='triton' cannot run {op}: "):
            call(op, args, kwargs, "triton")
    else:
        out = call(op, args, kwargs, "triton")
        torch.testing.assert_close(out, expected, rtol=2e-5, atol=2e-5)


@needs_triton
@pytest.mark.parametrize("op", OPS)
def test_forced_triton_outside_the_kernel_limits_names_the_limit(op, monkeypatch):
    fake = fake_kernel(op, monkeypatch, interpreter=True, limit="a limit, on sm_90 for float32")
    args, kwargs, _ = case(op)
    with pytest.raises(ValueError, match=rf"backend='triton' cannot run {op}: a limit, on sm_90 for float32"):
        call(op, args, kwargs, "triton")
    assert fake.calls == []


@needs_triton
@pytest.mark.parametrize("op", OPS)
def test_automatic_backend_outside_the_kernel_limits_is_the_reference(op, monkeypatch):
    fake = fake_kernel(op, monkeypatch, interpreter=True, limit="a limit")
    args, kwargs, expected = case(op)
    assert torch.equal(call(op, args, kwargs, None), expected)
    assert fake.calls == []


@needs_triton
def test_real_limits_fall_back_or_raise(monkeypatch):
    """The kernels' own limits: a head dim over 128, rows wider than 8192 channels."""
    interpreter(monkeypatch, True)
    q = torch.randn(1, 2, 2, 1, 160)
    want = reference.window_attention(q, q, q, (2, 2))
    assert torch.equal(ops.window_attention(q, q, q, (2, 2)), want)
    with pytest.raises(ValueError, match=r"head dim d = 160 .* limit of 128 on sm_90 for torch.float32"):
        ops.window_attention(q, q, q, (2, 2), backend="triton")
    x, shift = torch.randn(1, 2, 8200), torch.randn(1, 8200)
    assert torch.equal(ops.modulate(x, shift, shift), reference.modulate(x, shift, shift))
    with pytest.raises(ValueError, match=r"C <= 8192 channels on sm_90 for torch.float32"):
        ops.modulate(x, shift, shift, backend="triton")


@needs_triton
@pytest.mark.parametrize("op", OPS)
def test_forced_triton_without_interpreter_names_the_reason(op, monkeypatch):
    fake_kernel(op, monkeypatch, interpreter=False)
    args, kwargs, _ = case(op)
    with pytest.raises(RuntimeError, match=r"not on a CUDA device.*TRITON_INTERPRET=1"):
        call(op, args, kwargs, "triton")


@needs_triton
@pytest.mark.parametrize("op", OPS)
def test_automatic_backend_on_cpu_without_interpreter_is_the_reference(op, monkeypatch):
    fake = fake_kernel(op, monkeypatch, interpreter=False)
    args, kwargs, expected = case(op)
    assert torch.equal(call(op, args, kwargs, None), expected)
    assert fake.calls == []


@pytest.mark.parametrize("op", OPS)
def test_automatic_backend_gives_reference_result(op):
    """backend=None on CPU computes the reference function, on the kernel or the reference."""
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


def fake_kernel(op, monkeypatch, interpreter: bool, limit: str = None) -> _FakeKernel:
    """A ``_FakeKernel`` in place of ``op``'s Triton entry point, with the dispatcher seeing the
    interpreter active or not (``interpreter``) and, given a ``limit``, the kernel's ``unsupported_reason`` giving it for
    every input."""
    fake = _FakeKernel(op)
    monkeypatch.setattr(kernel_module(op), op, fake)
    if limit is not None:
        monkeypatch.setattr(kernel_module(op), "unsupported_reason", lambda *a: limit)
    monkeypatch.setattr(dispatch, "interpreter_active", lambda: interpreter)
    return fake


@needs_triton
@pytest.mark.parametrize("op", OPS)
def test_automatic_backend_picks_kernel_under_interpreter(op, monkeypatch):
    fake = fake_kernel(op, monkeypatch, interpreter=True)
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
    fake = fake_kernel("window_attention", monkeypatch, interpreter=True)
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
    fake = fake_kernel("window_attention", monkeypatch, interpreter=True)
    q = torch.randn(1, 4, 4, 2, 8)
    with pytest.raises(ValueError, match="shift_size"):
        ops.window_attention(q, q, q, (2, 2), (2, 0))
    assert fake.calls == []


@needs_triton
def test_interpreter_flag_is_the_kernels_one_reading(monkeypatch):
    """TRITON_INTERPRET is read once, when the kernels are decorated: setting it later changes the
    dispatcher's decision no more than the kernels (CPU tensors never reach GPU-built kernels)."""
    from xswin_fast import kernels

    assert dispatch.interpreter_active() is kernels.INTERPRET
    monkeypatch.setenv("TRITON_INTERPRET", "0" if kernels.INTERPRET else "1")
    assert dispatch.interpreter_active() is kernels.INTERPRET
    q = torch.randn(1, 2, 2, 1, 8)
    if kernels.INTERPRET:
        torch.testing.assert_close(ops.window_attention(q, q, q, (2, 2), backend="triton"),
                                   reference.window_attention(q, q, q, (2, 2)))
    else:
        with pytest.raises(RuntimeError, match="Triton's interpreter is not active"):
            ops.window_attention(q, q, q, (2, 2), backend="triton")


@needs_triton
@pytest.mark.parametrize("op", ["modulate", "layernorm_modulate", "gated_residual", "modulate_layernorm",
                                "residual_layernorm"])
def test_adaln_float64_is_computed_in_float64(op, monkeypatch):
    """The fused adaLN kernels compute in float32: float64 goes to the reference (float64) on
    automatic dispatch, and backend="triton" refuses it."""
    fake = fake_kernel(op, monkeypatch, interpreter=True)
    args, kwargs, _ = case(op)
    args = tuple(a.double() if isinstance(a, torch.Tensor) else a for a in args)
    out = call(op, args, kwargs, None)
    assert out.dtype == torch.float64 and fake.calls == []
    torch.testing.assert_close(out, call(op, args, kwargs, "torch"), rtol=0, atol=0)
    with pytest.raises(ValueError, match=rf"backend='triton' cannot run {op}: .*compute in float32.*got torch.float64"):
        call(op, args, kwargs, "triton")
    assert fake.calls == []
