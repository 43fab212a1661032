"""Backend selection for ``xswin_fast.ops``: the Triton kernel or the PyTorch reference.

``backend=None`` is automatic: the Triton kernel when one exists for the op and the tensors are
on a CUDA device or Triton's interpreter is active (``TRITON_INTERPRET=1``), the reference
otherwise. ``"triton"`` and ``"torch"`` force one; forcing ``"triton"`` where it cannot run is
an error, never a silent fallback.
"""
import os
from typing import Callable, Optional, Tuple

import torch

BACKENDS = ("torch", "triton")


def check_backend(backend: Optional[str]) -> None:
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be None, 'torch' or 'triton', got {backend!r}")


def interpreter_active() -> bool:
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


def triton_kernel(op: str, *tensors: torch.Tensor) -> Tuple[Optional[Callable], str]:
    """The Triton implementation of ``op`` for these tensors, or None and the reason why not."""
    ok, why = _triton_importable()
    if not ok:
        return None, why
    from xswin_fast import kernels

    fn = kernels.IMPLEMENTATIONS.get(op)
    if fn is None:
        return None, f"no Triton kernel is implemented for {op} yet"
    on_cuda = all(t.is_cuda for t in tensors)
    if not (on_cuda or (interpreter_active() and not any(t.is_cuda for t in tensors))):
        return None, (
            "the tensors are not on a CUDA device and Triton's interpreter is not active "
            "(set TRITON_INTERPRET=1 before importing xswin_fast to run kernels on the CPU)"
        )
    return fn, ""


def resolve(op: str, backend: Optional[str], *tensors: torch.Tensor) -> Optional[Callable]:
    """Return the Triton callable to run ``op`` with, or None for the PyTorch reference."""
    check_backend(backend)
    if backend == "torch":
        return None
    fn, why = triton_kernel(op, *tensors)
    if backend == "triton" and fn is None:
        raise RuntimeError(f"backend='triton' cannot run {op}: {why}")
    return fn
