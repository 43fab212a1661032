"""What the launchers know of the GPU they launch on.

Device facts come only from ``torch.cuda.get_device_properties(device)`` (its
``multi_processor_count``) and ``torch.cuda.get_device_capability(device)``, so that a compile
check can emulate a GPU by patching those two. Under Triton's interpreter (CPU tensors) the
kernels are treated as built for sm_90 and the launchers choose few, large programs (the
interpreter pays per program).
"""
from typing import Optional, Tuple

import torch

from . import INTERPRET

# the architecture assumed under the interpreter
INTERPRETED_CAPABILITY = (9, 0)
# the oldest architecture the kernels are built and checked for (Ampere)
MIN_CAPABILITY = (8, 0)
# usable shared memory per block (opt-in maximum, bytes) by compute capability; an architecture
# not listed gets the smallest of them
SHARED_MEMORY_PER_BLOCK = {
    (8, 0): 166912, (8, 6): 101376, (8, 7): 166912, (8, 9): 101376, (9, 0): 232448, (10, 0): 232448,
}


def capability(device: torch.device) -> Tuple[int, int]:
    """(major, minor) compute capability of the device the kernels launch on."""
    if INTERPRET:
        return INTERPRETED_CAPABILITY
    return tuple(torch.cuda.get_device_capability(device))


def arch_name(device: torch.device) -> str:
    major, minor = capability(device)
    return f"sm_{major}{minor}"


def multiprocessors(device: torch.device) -> Optional[int]:
    """SM count of the device, or None under the interpreter."""
    if INTERPRET:
        return None
    return torch.cuda.get_device_properties(device).multi_processor_count


def shared_memory_per_block(device: torch.device) -> int:
    """Shared memory a block may use on the device (bytes)."""
    return SHARED_MEMORY_PER_BLOCK.get(capability(device), min(SHARED_MEMORY_PER_BLOCK.values()))


def arch_reason(device: torch.device) -> Optional[str]:
    """Why the kernels cannot run on the device's architecture at all, or None."""
    if capability(device) < MIN_CAPABILITY:
        return f"the Triton kernels need sm_80 or newer, the device is {arch_name(device)}"
    return None
