"""Backend selection for ``xswin_fast.ops``: the Triton kernel or the PyTorch reference.

``backend=None`` is automatic: the Triton kernel when the tensors are on a CUDA device or Triton's
interpreter is active (``TRITON_INTERPRET=1``) and the kernel supports the inputs, the reference
otherwise. ``"triton"`` and ``"torch"`` force one. Forcing ``"triton"`` where it cannot run is an
error, never a silent fallback: RuntimeError when the environment cannot run Triton (no triton,
CPU tensors without the interpreter), ValueError naming the kernel's limit when the inputs are
outside it (its ``unsupported_reason``). Automatic dispatch that leaves a CUDA device's tensors on
the reference because the kernel cannot run them warns (``FallbackWarning``) with the reason.
"""
import os
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


def interpreter_active() -> bool:
    """Whether CPU tensors may go to the Triton launchers (Triton's interpreter runs them)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_TRITON_STATUS: Optional[Tuple[bool, str]] = None


def _triton_importable() -> Tuple[bool, str]:
    # a module-level flag rather than lru_cache, which Dynamo warns about in every compiled graph
    global _TRITON_STATUS
    if _TRITON_STATUS is None:
        try:
            import triton  # noqa: F401

            _TRITON_STATUS = (True, "")
        except Exception as exc:  # pragma: no cover - depends on the environment
            _TRITON_STATUS = (False, f"triton cannot be imported ({exc})")
    return _TRITON_STATUS


def _environment_reason(tensors: Iterable[Optional[torch.Tensor]]) -> Optional[str]:
    """Why Triton cannot run on these tensors' device in this process, or None."""
    ok, why = _triton_importable()
    if not ok:
        return why
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
