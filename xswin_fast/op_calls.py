"""Public-op calls of a model, recorded without computing anything.

``drive_model`` runs a preset forward and backward on uninitialised CPU tensors under
``NoCompute`` (big aten ops run on the meta device only: an XL model at 4x its native latent size
costs about a second) and records every call of an ``xswin_fast.ops`` function as an ``OpCall``:
the op, its arguments as ``TensorLayout`` (shape, strides, storage offset, dtype, requires_grad),
the autocast dtype and the layout of the gradient its output receives. ``OpCall.run`` calls the op
again on fresh tensors of those layouts, at another batch if asked, then its backward.

Used by the offline compile check (``xswin_fast.compile_check``) and the traffic model
(``xswin_fast.traffic``).
"""
import contextlib
import mmap
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# the batch the models are driven at; no preset has a head count, channel count or window of 5,
# so a leading dim of 5 marks a per-sample tensor when the calls are replayed at other batches
MODEL_BATCH = 5


def _to_meta(x):
    if isinstance(x, torch.Tensor) and x.device.type == "cpu":
        n = x.untyped_storage().nbytes() // x.element_size()
        return torch.empty(max(n, 1), dtype=x.dtype, device="meta").as_strided(x.shape, x.stride(), x.storage_offset())
    if isinstance(x, torch.device) and x.type == "cpu":
        return torch.device("meta")
    return x


# Linux's MAP_NORESERVE (Python 3.11's mmap module does not name it)
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)
# storages from this size on are mapped without reserving memory (see empty_like_layout)
_UNRESERVED_BYTES = 1 << 30


def empty_like_layout(shape, stride, offset: int, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor with exactly this layout (pages are never touched).

    A storage of 1 GiB or more is an anonymous private mapping with MAP_NORESERVE: replayed at
    batch 256, ASCEND-256 at 4x its size (1024 px) asks for tensors of up to 137 GB, which Linux's
    default overcommit heuristic refuses to ``torch.empty`` on a machine with less memory, though
    no page of them is ever written. The mapping is page-aligned, as aligned as torch's own."""
    extent = 0 if 0 in shape else 1 + sum((s - 1) * abs(st) for s, st in zip(shape, stride))
    numel = max(offset + extent, 1)
    if numel * dtype.itemsize < _UNRESERVED_BYTES:
        storage = torch.empty(numel, dtype=dtype)
    else:
        pages = mmap.mmap(-1, numel * dtype.itemsize, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE)
        storage = torch.frombuffer(pages, dtype=dtype, count=numel)
    return storage.as_strided(tuple(shape), tuple(stride), offset)


def _to_cpu(x):
    if isinstance(x, torch.Tensor) and x.device.type == "meta":
        out = empty_like_layout(x.shape, x.stride(), x.storage_offset(), x.dtype)
        # a small result of a big op (a reduction such as the reference's finiteness check) is
        # zeroed: code that branches on it then takes its common path deterministically
        return out.zero_() if out.numel() <= NoCompute.SMALL else out
    return x


class NoCompute(TorchDispatchMode):
    """Aten ops on big tensors run on the meta device: outputs get the right shape, strides and
    dtype, uninitialised (zeros when the output itself is small). Small ones (data-dependent checks, embeddings of t and y) run for real,
    so do views, and non-aten ops (the kernels' custom ops) run their real implementation, which
    reaches the kernel launches, under this mode too: the outputs, partial sums and copies of the
    kernels' launchers cost nothing either (a real ``torch.empty`` of an output of 24-137 GB, as
    ASCEND-256 at 4x its size asks at batch 256, fails on a machine with less memory)."""

    SMALL = 1 << 16

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace != "aten":
            # the op's CPU implementation, with this mode on for the aten ops inside it
            with self:
                return func.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CPU), *args, **kwargs)
        flat = [a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        small = sum(t.numel() for t in flat) <= self.SMALL and "empty" not in func.__name__
        if func.is_view or small:
            return func(*args, **kwargs)
        out = func(*tree_map(_to_meta, args), **tree_map(_to_meta, kwargs))
        if func._schema.is_mutable:
            return self._mutated(func, args, kwargs)
        return tree_map(_to_cpu, out)

    @staticmethod
    def _mutated(func, args, kwargs):
        """In-place and out= ops return the argument they write to."""
        schema, results = func._schema, []
        for ret in schema.returns:
            for i, arg in enumerate(schema.arguments):
                if arg.alias_info is not None and ret.alias_info is not None and \
                        arg.alias_info.before_set == ret.alias_info.before_set:
                    results.append(kwargs[arg.name] if arg.name in kwargs else args[i])
                    break
        return results[0] if len(results) == 1 else tuple(results)


class TensorLayout(NamedTuple):
    shape: Tuple[int, ...]
    stride: Tuple[int, ...]
    offset: int
    dtype: torch.dtype
    requires_grad: bool

    @classmethod
    def of(cls, t: torch.Tensor) -> "TensorLayout":
        """``t``'s layout. The storage offset is kept modulo 16 elements: of the offset only the
        pointer's alignment reaches a kernel (Triton specialises pointers on 16-byte divisibility),
        and one (B, k*C) adaLN projection sliced per block would make every block a new call."""
        return cls(tuple(t.shape), tuple(t.stride()), t.storage_offset() % 16, t.dtype, t.requires_grad)

    def per_sample(self) -> bool:
        return len(self.shape) > 0 and self.shape[0] == MODEL_BATCH and self.stride[0] == max(self.stride)

    def build(self, batch: Optional[int]) -> torch.Tensor:
        shape = (batch,) + self.shape[1:] if batch is not None and self.per_sample() else self.shape
        t = empty_like_layout(shape, self.stride, self.offset, self.dtype)
        return t.requires_grad_(self.requires_grad)


class OpCall(NamedTuple):
    """One call of a public op: its name, arguments (tensors as layouts), autocast dtype and the
    layout of the gradient its output received (None: no backward)."""

    op: str
    args: tuple
    kwargs: tuple
    autocast: Optional[torch.dtype]
    grad: Optional[TensorLayout]

    @classmethod
    def of(cls, op: str, args: tuple, kwargs: dict, grad: Optional[torch.Tensor] = None,
           autocast: Optional[torch.dtype] = None) -> "OpCall":
        """The call ``ops.<op>(*args, **kwargs)`` of these tensors, with output gradient ``grad``."""
        def layout(x):
            return TensorLayout.of(x) if isinstance(x, torch.Tensor) else x

        return cls(op, tuple(layout(a) for a in args), tuple(sorted((k, layout(v)) for k, v in kwargs.items())),
                   autocast, None if grad is None else TensorLayout.of(grad)._replace(requires_grad=False))

    def run(self, batch: Optional[int] = None, backend: Optional[str] = "triton") -> None:
        """Call the op on ``backend`` with fresh tensors (per-sample ones at ``batch`` if given),
        then its backward."""
        from . import ops

        def build(x):
            return x.build(batch) if isinstance(x, TensorLayout) else x

        args = [build(a) for a in self.args]
        kwargs = {k: build(v) for k, v in self.kwargs}
        leaves = [t for t in list(args) + list(kwargs.values()) if isinstance(t, torch.Tensor) and t.requires_grad]
        with torch.autocast("cpu", dtype=self.autocast or torch.bfloat16, enabled=self.autocast is not None):
            out = getattr(ops, self.op)(*args, **{**kwargs, "backend": backend})
        if self.grad is not None and leaves:
            torch.autograd.grad(out, leaves, self.grad.build(batch), allow_unused=True)


def public_ops() -> List[str]:
    import inspect

    from . import ops

    return [n for n in ops.__all__ if callable(getattr(ops, n)) and "backend" in inspect.signature(getattr(ops, n)).parameters]


@contextlib.contextmanager
def recording_op_calls(calls: Dict[OpCall, set], label: tuple):
    """Record every public-op call (wrapping ``xswin_fast.ops.<op>``) into ``calls[call] -> labels``,
    with the layout of the gradient its output receives in the backward run inside the block."""
    from . import ops

    pending = []

    def layout(x):
        return TensorLayout.of(x) if isinstance(x, torch.Tensor) else x

    def wrap(name, f):
        def recorded(*args, **kwargs):
            backend = kwargs.pop("backend", None)
            autocast = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
            call = OpCall(name, tuple(layout(a) for a in args), tuple(sorted((k, layout(v)) for k, v in kwargs.items())),
                          autocast, None)
            out = f(*args, **kwargs, backend=backend)
            pending.append([call, None])
            if out.requires_grad:
                entry = pending[-1]
                out.register_hook(lambda g: entry.__setitem__(1, TensorLayout.of(g)._replace(requires_grad=False)))
            return out
        return recorded

    saved = {n: getattr(ops, n) for n in public_ops()}
    for n, f in saved.items():
        setattr(ops, n, wrap(n, f))
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(ops, n, f)
    for call, grad in pending:
        calls.setdefault(call._replace(grad=grad), set()).add(label)


def drive_model(preset: str, latent: int, precision: str, calls: Dict[OpCall, set], backend: Optional[str] = "torch") -> None:
    """Run ``preset`` forward and backward at a square ``latent`` (uninitialised weights, no
    compute; fp32, or bf16 / fp16 under ``torch.autocast`` like the trainer) with its ops on
    ``backend``; record its public-op calls in ``calls``, labelled (preset, latent, precision)."""
    from .models.registry import create_model

    with torch.device("meta"):
        model = create_model(preset, input_size=latent)
    model = model.to_empty(device="cpu").set_backend(backend).train()
    x = torch.empty(MODEL_BATCH, model.in_channels, latent, latent)
    t, conditions = torch.zeros(MODEL_BATCH), model.example_conditions(MODEL_BATCH)
    dtype = PRECISIONS[precision]
    with recording_op_calls(calls, ("preset", preset, latent, precision)), NoCompute():
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out = model(x, t, **conditions)
        out.backward(torch.empty_like(out))
