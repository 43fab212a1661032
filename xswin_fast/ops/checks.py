"""Argument checks shared by the ops: bad input gets a clear ValueError/TypeError naming it."""
from typing import Optional, Sequence

import torch


def floating(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")


def same_device(**tensors: Optional[torch.Tensor]) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        raise ValueError(f"all tensors must be on one device, got {devices}")


def pair(name: str, value: Sequence[int]) -> tuple:
    try:
        a, b = value
        a, b = int(a), int(b)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a pair of ints (h, w), got {value!r}") from None
    return a, b


def per_sample(name: str, t: torch.Tensor, x: torch.Tensor) -> None:
    """t must be (B, C) for x of shape (B, ..., C)."""
    floating(name, t)
    expected = (x.shape[0], x.shape[-1])
    if t.dim() != 2 or tuple(t.shape) != expected:
        raise ValueError(
            f"{name} must have shape (B, C) = {expected} to broadcast over x of shape "
            f"{tuple(x.shape)}, got {tuple(t.shape)}"
        )
