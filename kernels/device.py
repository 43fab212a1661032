"""What the launchers know of the GPU they launch on, and the per-architecture facts of the GPUs
the kernels are built and checked for.

Device facts come only from ``torch.cuda.get_device_properties(device)`` (its
``multi_processor_count``) and ``torch.cuda.get_device_capability(device)``, so that a compile
check or a test can emulate a GPU by patching those two. Under Triton's interpreter (CPU
tensors) the kernels are treated as built for sm_90 and the launchers choose few, large programs
(the interpreter pays per program).

``ARCHITECTURES`` holds, per compute capability, the limits a launch plan and an occupancy
estimate need, from NVIDIA's CUDA C++ Programming Guide ("Technical Specifications per Compute
Capability") and the architecture tuning guides; the SM count is that of a named card, not an
architectural fact (docs/gpu_fitness.md cites each).
"""
from typing import NamedTuple, Optional, Tuple

import torch

from . import INTERPRET


class Architecture(NamedTuple):
    """Limits of one compute capability (per SM unless named per block) and a representative card."""

    name: str  # the compile target: Triton builds sm_90 and later as the arch-specific "a" variant
    cards: str  # example cards of this capability
    card: str  # the card whose SM count is given
    sms: int  # SMs of ``card``
    smem_block: int  # opt-in shared memory per block (bytes)
    smem_sm: int  # shared memory per SM (bytes); the driver reserves 1 KB per resident block of it
    regs_sm: int = 65536  # 32-bit registers per SM
    warps_sm: int = 64  # resident warps per SM
    blocks_sm: int = 32  # resident blocks per SM
    # warps of the window attention's SMALL backward: the count that compiles without spill on
    # this target (ptxas allocates differently per target; docs/gpu_fitness.md)
    small_bwd_warps: int = 4
    # tensor cores fed from each warp's registers (mma.sync), not from shared memory (wgmma on
    # sm_90a, tcgen05 on sm_100a): the window attention's 16-bit cosine backward at head dim 64
    # takes the blocked split there (docs/gpu_fitness.md)
    warp_mma: bool = True
    # the largest head dim at which the one-pass 16-bit backward of a 64-token window (no cosine,
    # no bias gradient) compiles without spill; above it that backward takes the blocked split
    fused_bwd_max_d: int = 64
    # on the ``warp_mma`` targets, the largest head dim at which the split's 16-bit cosine passes
    # over a 64-token window compile without spill; above it they take the blocked split
    split_cosine_max_d: int = 32
    # the largest key tile of the one-pass 16-bit backward: on sm_100a its accumulators live in
    # tensor memory (512 columns), which 256-key tiles overflow (Triton then compiles the kernel to
    # a trap); larger tiles take the split
    fused_bwd_max_keys: int = 256
    # register cap of the adaLN token kernels: given none, ptxas-blackwell (sm_100a, sm_120) picks a
    # budget below what some of them hold and spills; an explicit cap lets it allocate what they
    # need (docs/gpu_fitness.md)
    token_maxnreg: Optional[int] = None


ARCHITECTURES = {
    (8, 0): Architecture("sm_80", "A100, A800, A30", "A100 SXM4", 108, 166912, 167936, small_bwd_warps=8),
    (8, 6): Architecture("sm_86", "RTX 3090, RTX 3080, RTX A6000, A40, A10", "RTX 3090", 82, 101376, 102400,
                         warps_sm=48, blocks_sm=16, small_bwd_warps=8),
    (8, 9): Architecture("sm_89", "RTX 4090, RTX 6000 Ada, L40S, L4", "RTX 4090", 128, 101376, 102400,
                         warps_sm=48, blocks_sm=24, small_bwd_warps=8),
    (9, 0): Architecture("sm_90a", "H100, H200, GH200", "H100 SXM5", 132, 232448, 233472, warp_mma=False),
    (10, 0): Architecture("sm_100a", "B200, GB200", "B200", 148, 232448, 233472, warp_mma=False,
                          fused_bwd_max_keys=128, token_maxnreg=255),
    (12, 0): Architecture("sm_120", "RTX 5090, RTX PRO 6000 Blackwell", "RTX 5090", 170, 101376, 102400,
                          warps_sm=48, fused_bwd_max_d=32, split_cosine_max_d=16, token_maxnreg=255),
}
# the architecture assumed under the interpreter
INTERPRETED_CAPABILITY = (9, 0)
# the oldest architecture the kernels are built and checked for (Ampere)
MIN_CAPABILITY = (8, 0)


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


def architecture(device: torch.device) -> Architecture:
    """The limits of the device's architecture; one not listed gets the listed architecture of its
    major version with the least shared memory, else the least of all (a plan chosen for it fits)."""
    cap = capability(device)
    if cap in ARCHITECTURES:
        return ARCHITECTURES[cap]
    same_major = [a for c, a in ARCHITECTURES.items() if c[0] == cap[0]]
    return min(same_major or ARCHITECTURES.values(), key=lambda a: a.smem_block)


def shared_memory_per_block(device: torch.device) -> int:
    """Shared memory a block may use on the device (bytes, the opt-in maximum)."""
    return architecture(device).smem_block


def arch_reason(device: torch.device) -> Optional[str]:
    """Why the kernels cannot run on the device's architecture at all, or None."""
    if capability(device) < MIN_CAPABILITY:
        return f"the Triton kernels need sm_80 or newer, the device is {arch_name(device)}"
    return None
