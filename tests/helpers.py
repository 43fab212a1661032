"""What the tests share: one error metric with one per-dtype tolerance table, NaN-poisoned
allocations, model inputs and forward/backward comparisons, and train.py's argv for tiny runs.
The backbone families' specs (and tiny models) are in families.py, fixtures in conftest.py, the
slow naive twins of the ops in naive.py.
"""
import contextlib
import copy
import functools
import importlib
import math
import sys
from pathlib import Path
from unittest import mock

import torch

from families import TINY_DIGITS
from xswin_fast import create_model
from xswin_fast.layers.attention import WindowAttention, WindowCrossAttention
from xswin_fast.layers.blocks import SwinBlock

LOG_100 = math.log(100.0)  # the clamp of SwinV2's logit scale: temperatures up to 100

# The largest rel_err of a result against the float64 (or upcast float32) reference, by the
# dtype the result was computed in, for every op, kernel and model comparison of the suite:
# fp16 5e-3 and bf16 4e-2, about ten units of the output's own rounding (2^-11, 2^-8), since a
# float32-accumulating implementation rounds each output once and its inputs once; fp32 1e-4,
# about 800 ulps (2^-23), the room the cosine attention's temperature (up to 100) needs when it
# amplifies the rounding of the scores; fp64 1e-10, for sums taken in another order.
TOL = {
    torch.float64: 1e-10,
    torch.float32: 1e-4,
    torch.float16: 5e-3,
    torch.bfloat16: 4e-2,
}


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max(1, max |expected|): relative to the largest entry (so that sums
    over many tokens and small entries are held to the same precision), absolute below 1."""
    diff = (actual.double() - expected.double()).abs()
    if not diff.numel():
        return 0.0
    return (diff.max() / expected.double().abs().max().clamp(min=1.0)).item()


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype = None) -> None:
    """``actual`` has ``expected``'s shape, is finite where it is, and rel_err <= TOL[dtype]
    (``dtype`` defaults to actual's: the precision the result was computed in)."""
    dtype = dtype or actual.dtype
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    finite = torch.isfinite(expected)
    assert torch.isfinite(actual[finite]).all(), f"{name}: non-finite values (an unwritten element?)"
    err = rel_err(actual, expected)
    assert err <= TOL[dtype], f"{name}: relative error {err:.2e} > {TOL[dtype]:.0e} ({dtype})"


class _PoisonedTorch:
    """Stands in for ``torch`` inside a kernel module: its ``empty`` and ``empty_like`` return
    NaN-filled floating-point tensors; everything else is torch's."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def empty(*args, **kwargs):
        return _poison(torch.empty(*args, **kwargs))

    @staticmethod
    def empty_like(*args, **kwargs):
        return _poison(torch.empty_like(*args, **kwargs))


def _poison(t: torch.Tensor) -> torch.Tensor:
    return t.fill_(float("nan")) if t.is_floating_point() else t


@contextlib.contextmanager
def poisoned_allocations():
    """NaN-fill every tensor that the Triton launchers (the modules of ``xswin_fast.kernels``)
    allocate with torch.empty / empty_like, so that an element a kernel fails to write shows up.

    The kernel modules' ``torch`` is replaced, not torch's own functions: Dynamo records the
    identity of torch's functions when first used, and a patched ``torch.empty`` seen there would
    break every later compiled graph.
    """
    import xswin_fast.kernels  # noqa: F401  (loads every kernel module)

    modules = [m for name, m in list(sys.modules.items())
               if name.startswith("xswin_fast.kernels.") and getattr(m, "torch", None) is torch]
    with contextlib.ExitStack() as stack:
        for module in modules:
            stack.enter_context(mock.patch.object(module, "torch", _PoisonedTorch()))
        yield


@functools.lru_cache(maxsize=None)
def meta_preset(name: str):
    """Preset ``name`` at its own size on the meta device (shapes, no storage), built once per
    process: the tests that read a preset's structure share it, so none may change it."""
    with torch.device("meta"):
        return create_model(name)


@torch.no_grad()
def randomize_(model, std: float = 0.05):
    """Add normal(0, std) noise to every trainable parameter: at initialisation the adaLN and output
    layers are zero, so the output is constant in the conditioning and comparisons are vacuous."""
    for p in model.parameters():
        if p.requires_grad:
            p.add_(torch.randn_like(p) * std)
    return model


def model_inputs(model, B: int = 2, H: int = None, W: int = None, seed: int = 0):
    """x (B, in_channels, H, W) latents (default: the model's input_size), t (B,) integer timesteps
    in [0, 1000), y (B,) labels in [0, num_classes), from their own generator."""
    g = torch.Generator().manual_seed(seed)
    H = H or model.input_size
    W = W or H
    x = torch.randn(B, model.in_channels, H, W, generator=g)
    t = torch.randint(0, 1000, (B,), generator=g)
    y = torch.randint(0, model.num_classes, (B,), generator=g)
    return x, t, y


def forward_backward(model, inputs, seed: int = 0):
    """(output, {name: grad}) of mean(out^2), with the same drop-path and label-dropout draws."""
    torch.manual_seed(seed)
    out = model(*inputs)
    model.zero_grad()
    out.square().mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same_forward_backward(got, ref) -> None:
    """Two ``forward_backward`` results agree: the output to 1e-4 / 1e-5, every gradient to 1e-4
    relative and 1e-5 absolute scaled by the reference gradient's largest entry (at least 1)."""
    torch.testing.assert_close(got[0], ref[0], rtol=1e-4, atol=1e-5)
    assert got[1].keys() == ref[1].keys()
    for n in ref[1]:
        scale = max(1.0, ref[1][n].abs().max().item())
        torch.testing.assert_close(got[1][n], ref[1][n], rtol=1e-4, atol=1e-5 * scale, msg=n)


def swin_block_on_torch() -> SwinBlock:
    """A randomised SwinBlock(32 channels, 2 heads, 2x2 windows shifted by 1, c_dim 16) with every
    op on the torch backend: the block that the torch.compile tests trace."""
    block = SwinBlock(32, 2, (2, 2), (1, 1), c_dim=16)
    for m in block.modules():
        if hasattr(m, "backend"):
            m.backend = "torch"
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return block


def assert_compiles_like_eager(module, *inputs) -> None:
    """``torch.compile(module, fullgraph=True, backend="aot_eager")`` traces into one graph and gives
    eager's output and gradients (of mean(out^2) wrt the inputs that require grad and every
    parameter) to 1e-5."""
    def step(fn):
        out = fn(*inputs)
        wrt = [*(x for x in inputs if x.requires_grad), *module.parameters()]
        return out, torch.autograd.grad(out.square().sum(), wrt)

    want = step(module)
    torch._dynamo.reset()
    got = step(torch.compile(module, fullgraph=True, backend="aot_eager"))
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    for g, w in zip(got[1], want[1]):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def assert_fits_a_fixed_batch(model, inputs, lr: float, steps: int = 8) -> None:
    """``steps`` Adam steps of ``model(*inputs)`` (inputs: x, t, y) towards a fixed normal target
    of the output's shape lower the MSE by at least 20%."""
    x = inputs[0]
    target = torch.randn(x.shape[0], model.out_channels, *x.shape[2:], generator=torch.Generator().manual_seed(1))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(*inputs), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def triton_adaln(model):
    """A copy of ``model`` with its adaLN ops on the Triton backend (automatic under the
    interpreter) and window attention on the reference: for tests of the adaLN kernels, whether
    or not an attention kernel exists."""
    model = copy.deepcopy(model).set_backend(None)
    for m in model.modules():
        if isinstance(m, (WindowAttention, WindowCrossAttention)):
            m.backend = "torch"
    return model


def train_args(run_dir: Path, *extra: str) -> list:
    """train.py's argv for a short, quiet run into ``run_dir``: the tiny XSwin-digits on the torch
    backend, one thread, batch 16, 2 steps, a loss line every step, no grid before the end (a
    4-image, 2-step one there). ``extra`` comes last, and argparse keeps a flag's last value, so
    it may change any of these (e.g. "--max-steps", "40", or "--model", "DiT-digits")."""
    return [
        "--run-dir", str(run_dir), "--model-kwargs", TINY_DIGITS, "--backend", "torch", "--threads", "1",
        "--global-batch-size", "16", "--max-steps", "2", "--log-every", "1", "--sample-every", "0",
        "--sample-num", "4", "--sample-steps", "2", "--no-progress", *extra,
    ]


def train_tiny_digits(run: Path, *extra: str) -> Path:
    """Train the tiny XSwin-digits for 4 steps of batch 32 into ``run``; ``extra``: more train.py
    flags (e.g. "--objective", "flow")."""
    from xswin_fast.cli import train

    rc = train.main(train_args(run, "--global-batch-size", "32", "--max-steps", "4", "--log-every", "2",
                               "--sample-num", "10", *extra))
    assert rc == 0
    return run


def strided(t, dim):
    """t's values in a slice of a NaN-filled tensor whose dimension ``dim`` has twice the packed
    stride: the kernels must read it through its strides (the NaN gaps show up otherwise)."""
    shape = list(t.shape)
    shape[dim] *= 2
    wide = torch.full(shape, math.nan, dtype=t.dtype)
    index = [slice(None)] * t.dim()
    index[dim] = slice(1, None, 2)
    wide[tuple(index)] = t
    return wide[tuple(index)]


EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@contextlib.contextmanager
def experiment_modules(*names: str):
    """The scripts ``names`` of experiments/ imported as modules, with that folder on sys.path (where
    a script finds its sibling files) for as long as the context lasts."""
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        yield tuple(importlib.import_module(name) for name in names)
    finally:
        sys.path.remove(str(EXPERIMENTS))


def counting_checkpoint(calls: list):
    """A gradient-checkpointing function for diffusers' ``enable_gradient_checkpointing`` that
    appends each checkpointed block's class name to ``calls``."""

    def checkpoint(block, *args):
        calls.append(type(block).__name__)
        return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)

    return checkpoint
