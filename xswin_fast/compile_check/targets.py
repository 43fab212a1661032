"""The GPUs the compile check compiles for, and the emulation of one on a machine without a GPU."""
import contextlib
import math
import types
from typing import Dict, NamedTuple, Optional, Tuple

import torch


class Target(NamedTuple):
    """One GPU architecture the kernels are compiled for: the facts of ``kernels.device`` (a named
    card's SM count, the per-SM limits occupancy needs) and the SASS opcodes that are its tensor
    cores."""

    arch: int  # 10 * major + minor, Triton's GPUTarget arch
    name: str
    gpu: str
    sms: int
    smem_block: int  # opt-in shared memory per block (bytes)
    smem_sm: int
    regs_sm: int
    warps_sm: int
    blocks_sm: int
    tensor_cores: Tuple[str, ...]


# SASS opcodes of a tensor-core product per target: HMMA is mma.sync (every target from sm_80 on;
# on sm_90a and sm_100a Triton keeps it for tiles below the 64-row minimum of the wider
# instructions), HGMMA is Hopper's warpgroup wgmma, UTCHMMA / UTCQMMA / UTCIMMA / UTCOMMA are
# Blackwell's tcgen05.mma (16-bit, 8-bit float, integer, 4-bit/mixed), sm_100a only: sm_120 has
# neither wgmma nor tcgen05.
TENSOR_CORE_OPCODES = {
    80: ("HMMA",), 86: ("HMMA",), 89: ("HMMA",), 90: ("HGMMA", "HMMA"),
    100: ("UTCHMMA", "UTCQMMA", "UTCIMMA", "UTCOMMA", "HMMA"), 120: ("HMMA",),
}


def _targets() -> Dict[int, Target]:
    from ..kernels.device import ARCHITECTURES

    return {10 * major + minor: Target(10 * major + minor, a.name, a.card, a.sms, a.smem_block, a.smem_sm, a.regs_sm,
                                       a.warps_sm, a.blocks_sm, TENSOR_CORE_OPCODES[10 * major + minor])
            for (major, minor), a in ARCHITECTURES.items()}


TARGETS = _targets()
SMEM_RESERVED_PER_BLOCK = 1024  # the driver's reservation per block on sm_80 and later


@contextlib.contextmanager
def emulated_gpu(target: Target, consulted: Optional[list] = None):
    """The kernels' device queries answer as ``target`` (and count in ``consulted``)."""
    props = types.SimpleNamespace(
        name=f"emulated {target.gpu}", major=target.arch // 10, minor=target.arch % 10,
        multi_processor_count=target.sms, shared_memory_per_block_optin=target.smem_block,
        shared_memory_per_multiprocessor=target.smem_sm, regs_per_multiprocessor=target.regs_sm,
        max_threads_per_multi_processor=target.warps_sm * 32, warp_size=32, total_memory=80 << 30,
    )

    def properties(*_args, **_kwargs):
        if consulted is not None:
            consulted.append(target.arch)
        return props

    saved = {n: getattr(torch.cuda, n) for n in ("get_device_properties", "get_device_capability", "current_device")}
    torch.cuda.get_device_properties = properties
    torch.cuda.get_device_capability = lambda *a, **k: (properties().major, props.minor)
    torch.cuda.current_device = lambda: 0
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.cuda, n, f)


@contextlib.contextmanager
def triton_on_cpu():
    """``backend="triton"`` accepts CPU tensors (the dispatch's one switch for this)."""
    from ..ops import dispatch

    saved = dispatch.interpreter_active
    dispatch.interpreter_active = lambda: True
    try:
        yield
    finally:
        dispatch.interpreter_active = saved


def occupancy(target: Target, regs: int, shared: int, warps: int) -> float:
    """Resident warps per SM / the SM's maximum, from registers, shared memory and warps."""
    by_warps = target.warps_sm // warps
    regs_per_warp = math.ceil(max(regs, 1) * 32 / 256) * 256
    by_regs = target.regs_sm // regs_per_warp // warps
    by_smem = target.smem_sm // (shared + SMEM_RESERVED_PER_BLOCK)
    return min(target.blocks_sm, by_warps, by_regs, by_smem) * warps / target.warps_sm
