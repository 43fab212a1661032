"""Backend selection for ``xswin_fast.ops``: the Triton kernel or the PyTorch reference.

``backend=None`` is automatic: the Triton kernel when the tensors are on a CUDA device or Triton's
interpreter is active (``TRITON_INTERPRET=1``) and the kernel supports the inputs, the reference
otherwise. ``"triton"`` and ``"torch"`` force one. Forcing ``"triton"`` where it cannot run is an
error, never a silent fallback: RuntimeError when the environment cannot run Triton (no triton,
CPU tensors without the interpreter), ValueError naming the kernel's limit when the inputs are
outside it (its ``unsupported_reason``). Automatic dispatch that leaves a CUDA device's tensors on
the reference because the kernel cannot run them warns (``FallbackWarning``) with the reason.
"""
import warnings
from typing import Callable, Iterable, Optional, Tuple

import torch

BACKENDS = ("torch", "triton")


class FallbackWarning(UserWarning):
    """A call on a CUDA device runs on the PyTorch reference: the Triton kernel cannot run it."""


def _warn_fallback(op: str, why: str) -> None:
    # One warning per distinct message: Python's warning registry dedupes them, and the reason names
    # the shape class (window, head dim, channels, dtype, architecture). Under torch.compile the
    # warning is issued once while Dynamo traces (comptime), so it neither breaks the graph nor
    # keeps module state that a graph would read.
    message = f"{op} runs on the PyTorch reference on this CUDA device (slower): {why}"
    if torch.compiler.is_compiling():
        from torch._dynamo.comptime import comptime

        comptime(lambda ctx: warnings.warn(ctx.get_local("message").as_python_constant(), FallbackWarning))
    else:
        warnings.warn(message, FallbackWarning, stacklevel=4)


def check_backend(backend: Optional[str]) -> None:
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be None, 'torch' or 'triton', got {backend!r}")


def _load_kernels() -> Tuple[Optional[str], bool]:
    """(why Triton cannot run in this process, or None; whether Triton's interpreter is on)."""
    try:
        from .. import kernels
    except Exception as exc:  # pragma: no cover - depends on the environment
        return f"triton cannot be imported ({exc})", False
    return None, kernels.INTERPRET


# Settled once, at import: the kernels read TRITON_INTERPRET when they are decorated, so the
# dispatcher takes their reading (setting the variable later changes neither), and a value filled
# lazily would change module state inside a compiled region (torch.compile would recompile).
_TRITON_UNAVAILABLE, _INTERPRET = _load_kernels()


def interpreter_active() -> bool:
    """Whether CPU tensors may go to the Triton launchers: Triton's interpreter was active when the
    kernels were imported (``xswin_fast.kernels.INTERPRET``, the one reading of TRITON_INTERPRET)."""
    return _INTERPRET


def _environment_reason(tensors: Iterable[Optional[torch.Tensor]]) -> Optional[str]:
    """Why Triton cannot run on these tensors' device in this process, or None."""
    if _TRITON_UNAVAILABLE is not None:
        return _TRITON_UNAVAILABLE
    present = [t for t in tensors if t is not None]
    if all(t.is_cuda for t in present) or (interpreter_active() and not any(t.is_cuda for t in present)):
        return None
    return (
        "the tensors are not on a CUDA device and Triton's interpreter is not active "
        "(set TRITON_INTERPRET=1 before importing xswin_fast to run kernels on the CPU)"
    )


def use_triton(
    op: str,
    backend: Optional[str],
    tensors: Iterable[Optional[torch.Tensor]],
    unsupported_reason: Callable[[], Optional[str]],
) -> bool:
    """Whether ``op`` runs on its Triton kernel. ``unsupported_reason`` (called only when Triton
    can run here) returns None when the kernel supports the inputs, else one sentence naming the
    limit; forced ``backend="triton"`` raises with it (RuntimeError for the environment,
    ValueError for the inputs)."""
    check_backend(backend)
    tensors = tuple(tensors)
    if backend == "torch":
        return False
    why = _environment_reason(tensors)
    if why is not None:
        if backend == "triton":
            raise RuntimeError(f"backend='triton' cannot run {op}: {why}")
        return False
    why = unsupported_reason()
    if why is not None:
        if backend == "triton":
            raise ValueError(f"backend='triton' cannot run {op}: {why}")
        if any(t is not None and t.is_cuda for t in tensors):
            _warn_fallback(op, why)
        return False
    return True
