"""Argument checks shared by the ops: bad input gets a clear ValueError/TypeError naming it."""
import math
import numbers
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
    """(a, b) of ints; floats, strings and bools are refused rather than truncated or coerced."""
    try:
        a, b = value
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a pair of ints (h, w), got {value!r}") from None
    for v in (a, b):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must be a pair of ints (h, w), got {value!r}")
    return int(a), int(b)


def positive_float(name: str, value) -> float:
    """A finite real number > 0 (an eps, a ratio; an int is accepted): TypeError for another type
    (a bool, a string, a tensor), ValueError for a number that is not finite and > 0. The one check
    of ops, layers and models."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite float > 0, got {value!r}")
    return float(value)


def per_sample(name: str, t: torch.Tensor, x: torch.Tensor) -> None:
    """t must be (B, C) for x of shape (B, ..., C)."""
    floating(name, t)
    expected = (x.shape[0], x.shape[-1])
    if t.dim() != 2 or tuple(t.shape) != expected:
        raise ValueError(
            f"{name} must have shape (B, C) = {expected} to broadcast over x of shape "
            f"{tuple(x.shape)}, got {tuple(t.shape)}"
        )


def _element_offsets(t: torch.Tensor) -> torch.Tensor:
    """(numel,) int64: the storage offset, in elements, of every element of t."""
    offsets = torch.zeros((), dtype=torch.int64, device=t.device) + t.storage_offset()
    for size, stride in zip(t.shape, t.stride()):
        offsets = offsets.unsqueeze(-1) + torch.arange(size, device=t.device) * stride
    return offsets.reshape(-1)


def _byte_range(t: torch.Tensor) -> tuple:
    """[first, last) byte addresses spanned by t (torch strides are never negative)."""
    last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size()


def _has_internal_overlap(t: torch.Tensor) -> bool:
    dims = sorted((stride, size) for size, stride in zip(t.shape, t.stride()) if size > 1)
    reach = 0
    for stride, size in dims:
        if stride <= reach:
            # the fast layout rule fails; only an exact count settles it (rare, odd layouts)
            return torch.unique(_element_offsets(t)).numel() < t.numel()
        reach += stride * (size - 1)
    return False


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.numel() == 0 or b.numel() == 0 or a.device != b.device:
        return False
    if a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False
    (a0, a1), (b0, b1) = _byte_range(a), _byte_range(b)
    if a1 <= b0 or b1 <= a0:
        return False
    if a.element_size() != b.element_size():
        return True  # partly shared bytes of different dtypes: counted as overlapping
    # interleaved spans (e.g. the two halves of one concatenation buffer): mark a's elements in
    # one flag per element of the span the two cover, then look b's up (linear, no sort)
    offsets_a, offsets_b = _element_offsets(a), _element_offsets(b)
    start = min(a.storage_offset(), b.storage_offset())
    end = max(int(offsets_a.max()), int(offsets_b.max())) + 1
    touched = torch.zeros(end - start, dtype=torch.bool, device=a.device)
    touched[offsets_a - start] = True
    return bool(touched[offsets_b - start].any())


def writable_output(out: torch.Tensor, **inputs: Optional[torch.Tensor]) -> None:
    """out is written in full while the inputs are read: it must share no memory with any input
    and must not overlap itself (a stride-0 expand, a self-overlapping as_strided)."""
    if torch.compiler.is_compiling():
        return  # traced (fake) tensors have no memory to compare; eager calls are checked
    if _has_internal_overlap(out):
        raise ValueError(
            f"out must not overlap itself (stride 0 or a self-overlapping view), got shape "
            f"{tuple(out.shape)} with strides {out.stride()}"
        )
    for name, t in inputs.items():
        if t is not None and _overlap(out, t):
            raise ValueError(f"out must not share memory with the input {name}: pass a separate output buffer")
