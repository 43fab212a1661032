"""Adaptive-LayerNorm modulation ops (docs/design.md §3.2) and the fused forms the XSwin blocks need.

x, y: (B, ..., C) with any number of token dims; shift, scale, gate: (B, C), broadcast over the
tokens of each sample. Gradients flow to every tensor argument.

float64 inputs are computed in float64 on the reference: the fused kernels accumulate in float32,
so automatic dispatch does not send float64 to them and ``backend="triton"`` refuses it
(ValueError) rather than computing in float32 silently.
"""
from typing import Optional

import torch

from . import checks, reference
from .dispatch import use_triton

__all__ = ["modulate", "layernorm_modulate", "gated_residual", "modulate_layernorm", "residual_layernorm"]


def _tokens(name: str, x: torch.Tensor) -> None:
    checks.floating(name, x)
    if x.dim() < 2:
        raise ValueError(f"{name} must have shape (B, ..., C), got {tuple(x.shape)}")


def _affine(x, weight, bias, normalized: torch.dtype) -> None:
    """weight, bias: None or (C,), of the dtype of the tensor they scale (``normalized``), or both
    float32 for a float16/bfloat16 one (LayerNorm's mixed precision); TypeError otherwise."""
    allowed = (normalized, torch.float32) if normalized in (torch.float16, torch.bfloat16) else (normalized,)
    given = {name: t for name, t in (("weight", weight), ("bias", bias)) if t is not None}
    for name, t in given.items():
        checks.floating(name, t)
        if tuple(t.shape) != (x.shape[-1],):
            raise ValueError(f"{name} must have shape (C,) = ({x.shape[-1]},), got {tuple(t.shape)}")
        if t.dtype not in allowed:
            raise TypeError(
                f"{name} must have the dtype of the tensor it normalises ({normalized}), or float32 for a "
                f"float16/bfloat16 one, got {t.dtype}"
            )
    if len(given) == 2 and weight.dtype != bias.dtype:
        raise TypeError(f"bias must have weight's dtype {weight.dtype}, got {bias.dtype}")


def _kernel():
    # imported on first use: the reference path must work where triton cannot be imported
    from xswin_fast.kernels import adaln as kernel

    return kernel


def _on_triton(op: str, backend: Optional[str], tensors: dict) -> bool:
    checks.same_device(**tensors)
    return use_triton(
        op, backend, tensors.values(),
        lambda: _kernel().unsupported_reason(*tensors.values()),
    )


def modulate(x, shift, scale, backend: Optional[str] = None) -> torch.Tensor:
    """x * (1 + scale) + shift. x (B, ..., C); shift, scale (B, C). Returns x's shape and dtype."""
    _tokens("x", x)
    checks.per_sample("shift", shift, x)
    checks.per_sample("scale", scale, x)
    if _on_triton("modulate", backend, dict(x=x, shift=shift, scale=scale)):
        return _kernel().modulate(x, shift, scale)
    return reference.modulate(x, shift, scale)


def layernorm_modulate(x, shift, scale, eps: float = 1e-6, backend: Optional[str] = None) -> torch.Tensor:
    """LayerNorm(x) without affine over C, then modulate (DiT). Statistics in fp32."""
    _tokens("x", x)
    checks.per_sample("shift", shift, x)
    checks.per_sample("scale", scale, x)
    eps = checks.positive_float("eps", eps)
    if _on_triton("layernorm_modulate", backend, dict(x=x, shift=shift, scale=scale)):
        return _kernel().layernorm_modulate(x, shift, scale, eps)
    return reference.layernorm_modulate(x, shift, scale, eps)


def gated_residual(x, y, gate, backend: Optional[str] = None) -> torch.Tensor:
    """x + gate * y (DiT adaLN-Zero). x, y (B, ..., C) of one shape; gate (B, C)."""
    _tokens("x", x)
    _tokens("y", y)
    if y.shape != x.shape:
        raise ValueError(f"y must have x's shape {tuple(x.shape)}, got {tuple(y.shape)}")
    checks.per_sample("gate", gate, x)
    if _on_triton("gated_residual", backend, dict(x=x, y=y, gate=gate)):
        return _kernel().gated_residual(x, y, gate)
    return reference.gated_residual(x, y, gate)


def modulate_layernorm(
    x, shift, scale, weight=None, bias=None, eps: float = 1e-5, backend: Optional[str] = None
) -> torch.Tensor:
    """LayerNorm(x * (1 + scale) + shift) with optional affine (C,): the XSwin ViT bottleneck."""
    _tokens("x", x)
    checks.per_sample("shift", shift, x)
    checks.per_sample("scale", scale, x)
    _affine(x, weight, bias, torch.promote_types(torch.promote_types(x.dtype, shift.dtype), scale.dtype))
    eps = checks.positive_float("eps", eps)
    if _on_triton("modulate_layernorm", backend, dict(x=x, shift=shift, scale=scale, weight=weight, bias=bias)):
        return _kernel().modulate_layernorm(x, shift, scale, weight, bias, eps)
    return reference.modulate_layernorm(x, shift, scale, weight, bias, eps)


def residual_layernorm(
    x, y, weight=None, bias=None, keep=None, eps: float = 1e-5, backend: Optional[str] = None
) -> torch.Tensor:
    """x + keep * LayerNorm(y) with optional affine (C,): the post-norm SwinV2 residual.

    keep (B,) is an optional per-sample multiplier (stochastic depth: 0 or 1/(1-p)).
    """
    _tokens("x", x)
    _tokens("y", y)
    if y.shape != x.shape:
        raise ValueError(f"y must have x's shape {tuple(x.shape)}, got {tuple(y.shape)}")
    _affine(x, weight, bias, y.dtype)
    if keep is not None:
        checks.floating("keep", keep)
        if tuple(keep.shape) != (x.shape[0],):
            raise ValueError(f"keep must have shape (B,) = ({x.shape[0]},), got {tuple(keep.shape)}")
    eps = checks.positive_float("eps", eps)
    if _on_triton("residual_layernorm", backend, dict(x=x, y=y, weight=weight, bias=bias, keep=keep)):
        return _kernel().residual_layernorm(x, y, weight, bias, keep, eps)
    return reference.residual_layernorm(x, y, weight, bias, keep, eps)
