"""Triton kernels of xswin_fast, imported as ``xswin_fast.kernels`` (never as top-level ``kernels``).

Each op module here reads top to bottom: ``@triton.jit`` kernels -> host launchers ->
``torch.autograd.Function``. Its PyTorch reference twin lives in ``xswin_fast.ops.reference``.
This package knows nothing of models.

``IMPLEMENTATIONS`` maps an op name of ``xswin_fast.ops`` to the callable that runs it on the
Triton backend; ``xswin_fast.ops`` dispatches through it. An op missing here has no Triton path
yet, and the automatic backend falls back to the PyTorch reference for it.
"""
import os
from typing import Callable, Dict

# read at @triton.jit decoration time, so it must be set before any kernel module is imported
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

IMPLEMENTATIONS: Dict[str, Callable] = {}

from . import adaln, window_attention  # noqa: E402  (after INTERPRET: they read it at import)

IMPLEMENTATIONS.update({op: getattr(adaln, op) for op in adaln.OPS})
IMPLEMENTATIONS["window_attention"] = window_attention.window_attention

__all__ = ["INTERPRET", "IMPLEMENTATIONS"]
