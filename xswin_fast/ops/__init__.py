"""Public functional API of xswin_fast (docs/design.md §3).

Every op takes ``backend=None`` (automatic: the Triton kernel when the tensors are on a CUDA
device or Triton's interpreter is active and the kernel supports the inputs, the PyTorch
reference otherwise),
``"triton"`` or ``"torch"``. Both compute the same function; ``xswin_fast.ops.reference`` is the
definition.
"""
from . import reference
from .dispatch import BACKENDS
from .adaln import gated_residual, layernorm_modulate, modulate, modulate_layernorm, residual_layernorm
from .window_attention import window_attention

__all__ = [
    "BACKENDS",
    "reference",
    "window_attention",
    "modulate",
    "layernorm_modulate",
    "gated_residual",
    "modulate_layernorm",
    "residual_layernorm",
]
