"""Which path ``ops.reference.window_attention`` takes, and that every path gives the same result:
SDPA over the folded mask, or the exact per-region path when an input may not be finite; under
``torch.compile`` and off the CPU (no look at the values, as the global ``Attention``); the
``finite`` promise. The semantics themselves are tested in test_window_attention_reference.py.
"""
import pytest
import torch

from helpers import assert_close, assert_compiles_like_eager, swin_block_on_torch
from naive import naive_window_attention
from xswin_fast import ops
from xswin_fast.ops import reference

pytestmark = pytest.mark.usefixtures("single_thread")


def test_torch_compile_takes_the_exact_path_fullgraph():
    # under torch.compile the reference cannot branch on the finiteness of its inputs: it always
    # takes the exact path, which must trace into one graph and give the eager (SDPA) results
    torch.manual_seed(0)
    block = swin_block_on_torch()
    assert_compiles_like_eager(block, torch.randn(2, 6, 6, 32, requires_grad=True), torch.randn(2, 16))


def test_torch_compile_builds_the_cached_masks_while_tracing():
    # a geometry no other test uses: its masks are first built inside the traced graph
    q, k, v = (torch.randn(1, 3, 9, 2, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    bias = torch.randn(2, 6, 6, dtype=torch.float64, requires_grad=True)

    def fn(q, k, v, bias):
        return ops.window_attention(q, k, v, (3, 2), (1, 1), bias, backend="torch")

    torch._dynamo.reset()
    got = torch.compile(fn, fullgraph=True, backend="aot_eager")(q, k, v, bias)
    torch.testing.assert_close(got, naive_window_attention(q, k, v, (3, 2), (1, 1), bias), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("finite", [True, False])
def test_finite_promise_selects_a_path_with_the_same_result(finite):
    # True: SDPA without looking (the fair torch.compile baseline); False: the exact path
    q, k, v = (torch.randn(2, 6, 7, 2, 8, dtype=torch.float64) for _ in range(3))
    bias = torch.randn(2, 9, 9, dtype=torch.float64)
    want = naive_window_attention(q, k, v, (3, 3), (1, 1), bias)
    assert_close("eager", reference.window_attention(q, k, v, (3, 3), (1, 1), bias, finite=finite), want)
    torch._dynamo.reset()
    compiled = torch.compile(reference.window_attention, fullgraph=True, backend="aot_eager")
    assert_close("compiled", compiled(q, k, v, (3, 3), (1, 1), bias, finite=finite), want)


def test_finite_promise_is_a_bool():
    q = torch.randn(1, 2, 2, 1, 4)
    with pytest.raises(TypeError, match="finite must be None, True or False"):
        reference.window_attention(q, q, q, (2, 2), finite=1)


def test_finite_promise_skips_the_check():
    # a NaN key in one shift region: the exact path keeps it there, the promised SDPA path does not
    q, k, v = (torch.randn(1, 4, 4, 1, 4) for _ in range(3))
    k[0, 0, 0] = float("nan")
    exact = reference.window_attention(q, k, v, (4, 4), (2, 2), finite=False)
    assert exact.isnan().any() and not exact.isnan().all()
    assert reference.window_attention(q, k, v, (4, 4), (2, 2), finite=True).isnan().all()


class _OpLog(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("compiling", [False, True], ids=["eager", "compiling"])
def test_off_the_cpu_the_values_are_not_looked_at(compiling, monkeypatch):
    """As the global Attention: off the CPU the SDPA path without a look at the values (a look is a
    host sync per call on a GPU), also under torch.compile (no slow exact path). Meta tensors
    stand in for an accelerator's."""
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: compiling)
    monkeypatch.setattr(ops.reference, "_exact_attention", lambda *a: pytest.fail("took the exact path"))
    q, k, v = (torch.randn(1, 4, 4, 2, 8, device="meta") for _ in range(3))
    bias = torch.randn(2, 4, 4, device="meta")
    ops.reference.window_attention(q, k, v, (2, 2), (1, 1), bias, finite=True)  # fills the mask cache
    with _OpLog() as log:
        out = ops.reference.window_attention(q, k, v, (2, 2), (1, 1), bias)
    with _OpLog() as promised:
        ops.reference.window_attention(q, k, v, (2, 2), (1, 1), bias, finite=True)
    assert out.shape == (1, 4, 4, 16)
    assert log.ops == promised.ops  # not one op more than when the caller promises finite values


def test_on_the_cpu_under_compile_the_exact_path_is_taken(monkeypatch):
    """On the CPU a compiled graph cannot branch on values: the exact path, as the global Attention."""
    taken = []
    exact = ops.reference._exact_attention
    monkeypatch.setattr(ops.reference, "_exact_attention", lambda *a: taken.append(1) or exact(*a))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    q, k, v = (torch.randn(1, 4, 4, 2, 8) for _ in range(3))
    ops.reference.window_attention(q, k, v, (2, 2), (1, 1))
    assert taken == [1]
