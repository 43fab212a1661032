"""Triton kernels of xswin_fast, imported as ``xswin_fast.kernels`` (never as top-level ``kernels``).

Each op is three modules: ``<op>_fwd`` (the forward ``@triton.jit`` kernels ``*_fwd_kernel`` and
the tile helpers), ``<op>_bwd`` (the backward kernels ``*_bwd_kernel``) and ``<op>``, which reads
top to bottom: launch plan (``TilePlan`` / ``RowPlan`` from ``_plan``) -> host launchers
``*_fwd`` / ``*_bwd`` -> ``torch.library.custom_op`` registration ``xswin_fast::*_fwd`` /
``*_bwd`` (fake and autograd) -> ``unsupported_reason``, which says whether the kernels can run
for given inputs on their device, and the entry points that ``xswin_fast.ops`` calls. Each op's
PyTorch reference twin lives in ``xswin_fast.ops.reference``. ``device`` is all the launchers know of the GPU. This package
knows nothing of models.
"""
import os

# The one reading of TRITON_INTERPRET in the package: Triton reads it when @triton.jit decorates,
# so it must be set before any kernel module is imported; xswin_fast.ops' dispatcher takes this
# value, so that setting the variable later sends no CPU tensor to GPU-built kernels.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

from . import adaln, device, window_attention  # noqa: E402  (after INTERPRET: they read it at import)

__all__ = ["INTERPRET", "adaln", "device", "window_attention"]
