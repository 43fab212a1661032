"""What a GPU session records of its card, and the card's published limits to compare with.

``record(device)`` on a CUDA machine: name, compute capability, SM count, clocks (``nvidia-smi``,
when present), the copy bandwidth measured by ``benchutils.measure_copy_bandwidth`` and the card's
entry of ``CARD_LIMITS`` with the measured bandwidth as a share of its peak. ``emulated()`` is the
dry run: the same record for the representative card of every architecture the kernels are
built for (``xswin_fast.kernels.device.ARCHITECTURES``), from its facts instead of a measurement.
"""
import subprocess
from typing import List, NamedTuple, Optional


class CardLimits(NamedTuple):
    """A card's published peaks (NVIDIA datasheets; docs/gpu_fitness.md): memory bandwidth and
    dense bf16 tensor-core throughput with fp32 accumulation."""

    bandwidth_GBps: float
    bf16_dense_TFLOPs: float


# matched against torch.cuda.get_device_name() in this order (the first substring that occurs)
CARD_LIMITS = {
    "H200": CardLimits(4800, 989),
    "H100 PCIe": CardLimits(2000, 756),
    "H100": CardLimits(3350, 989),
    "B200": CardLimits(8000, 2250),
    "A100-SXM4-40GB": CardLimits(1555, 312),
    "A100": CardLimits(2039, 312),
    "RTX A6000": CardLimits(768, 155),
    "RTX 3090": CardLimits(936, 71),
    "L40S": CardLimits(864, 362),
    "L4": CardLimits(300, 121),
    "RTX 4090": CardLimits(1008, 165),
    "RTX 5090": CardLimits(1792, 210),
}


def limits(name: str) -> Optional[CardLimits]:
    """The published limits of the card named ``name`` (``torch.cuda.get_device_name``), or None."""
    for key, lim in CARD_LIMITS.items():
        if key in name:
            return lim
    return None


def _clocks() -> Optional[str]:
    """SM clock, its maximum and the memory clock from ``nvidia-smi`` (MHz), or None without it."""
    try:
        proc = subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm,clocks.max.sm,clocks.mem", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip().splitlines()[0] if proc.returncode == 0 and proc.stdout.strip() else None


def _entry(name: str, capability: str, sms: int, clocks: Optional[str], copy_GBps: Optional[float]) -> dict:
    lim = limits(name)
    return dict(card=name, capability=capability, sms=sms, clocks=clocks, copy_GBps=copy_GBps,
                peak_GBps=lim.bandwidth_GBps if lim else None, bf16_dense_TFLOPs=lim.bf16_dense_TFLOPs if lim else None,
                copy_of_peak=round(copy_GBps / lim.bandwidth_GBps, 3) if lim and copy_GBps else None)


def record(device) -> dict:
    """The session's card: measured on ``device`` (a CUDA torch.device)."""
    import torch
    from benchutils import measure_copy_bandwidth

    props = torch.cuda.get_device_properties(device)
    return _entry(props.name, f"sm_{props.major}{props.minor}", props.multi_processor_count, _clocks(),
                  round(measure_copy_bandwidth(device), 1))


def emulated() -> List[dict]:
    """One record per architecture of ``kernels.device``: its representative card, nothing measured."""
    from xswin_fast.kernels.device import ARCHITECTURES

    return [_entry(a.card, a.name, a.sms, None, None) for a in ARCHITECTURES.values()]


def markdown(records: List[dict]) -> List[str]:
    lines = ["| card | capability | SMs | clocks (SM, max SM, memory) | copy GB/s | peak GB/s | copy / peak "
             "| bf16 dense TFLOP/s |", "|---|---|---:|---|---:|---:|---:|---:|"]
    for r in records:
        share = f"{r['copy_of_peak']:.0%}" if r["copy_of_peak"] is not None else "-"
        lines.append(f"| {r['card']} | {r['capability']} | {r['sms']} | {r['clocks'] or '-'} | {r['copy_GBps'] or '-'} | "
                     f"{r['peak_GBps'] or 'not listed'} | {share} | {r['bf16_dense_TFLOPs'] or '-'} |")
    return lines
