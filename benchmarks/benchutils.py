"""Shared machinery of the benchmark suite: the session environment, timing, checks and metrics.

Timing (docs/benchmarks.md has the long form):

* every case is first run and checked against the reference (a fast wrong result fails);
* then warmed up (compilation, autotuning, allocator) and calibrated: ``iterations`` calls per
  round, so that a round lasts at least ``TARGET_ROUND_S`` and the one synchronisation per round
  costs < 1 % of it;
* ``benchmark.pedantic`` then runs a fixed number of rounds; each call takes the next of several
  input sets (rotated so that small cases do not run out of a warm L2), and the last call of a
  round calls ``torch.cuda.synchronize()`` inside the timed region, so a round's time is the
  time of its GPU work;
* pytest-benchmark divides each round by ``iterations``: every statistic is per call.

Metrics go to ``benchmark.extra_info``: minimal bytes and achieved GB/s (against the copy
bandwidth of the device, measured once per session), FLOPs and TFLOP/s, the shape and dtype.
"""
import math
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

import torch

GiB = 1024**3

# fixed rounds per case; --bench-rounds overrides the timed ones
KERNEL_ROUNDS = {"cuda": 30, "cpu": 5}
MODEL_ROUNDS = {"cuda": 10, "cpu": 3}
WARMUP_ROUNDS = {"cuda": 3, "cpu": 1}
TARGET_ROUND_S = {"cuda": 2e-3, "cpu": 2e-3}
MAX_ITERATIONS = {"cuda": 500, "cpu": 50}

# output checks: max |actual - expected| / max |expected| (kernels; relative to the largest
# entry so that a wrong result, an O(1) error, fails and bf16 rounding does not)
KERNEL_TOL = {torch.float32: 1e-3, torch.float64: 1e-9, torch.float16: 1e-2, torch.bfloat16: 3e-2}
# models: ||actual - expected||_2 / ||expected||_2 over the whole output against the fp32
# reference model (bf16 autocast over dozens of layers loses more than one op does; measured
# 0.4-2 % on S presets, CFG amplifying by its scale), and over all parameter gradients of the
# benchmarked backend run in fp32 (Triton's fp32 dots may use TF32)
MODEL_TOL = {torch.float32: 1e-3, torch.bfloat16: 8e-2, torch.float16: 5e-2}
MODEL_GRAD_TOL = 1e-2

SKIP_NO_GPU_TRITON = (
    "needs a CUDA GPU: the Triton kernels run on the CPU only through Triton's interpreter, "
    "whose timings are meaningless"
)
SKIP_CPU_COMPILE = (
    "torch.compile/FlexAttention cases run on a GPU only; on the CPU their compile time (tens of "
    "seconds per case) would dominate the quick run (--bench-cpu-full runs them)"
)
SKIP_CPU_LARGE = "the quick CPU run keeps to small shapes (--bench-cpu-full runs this one at CPU batch sizes)"


@dataclass
class BenchEnv:
    """What every benchmark needs to know about this session's device."""

    device: torch.device
    device_name: str
    dtype: torch.dtype  # compute dtype of the kernel benchmarks (bf16 on a GPU, fp32 on the CPU)
    copy_GBps: float  # measured copy bandwidth of the device (read + write bytes per second)
    l2_bytes: int
    cpu_full: bool
    rounds_override: Optional[int]
    triton_interpret_disabled: bool

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def kind(self) -> str:
        return self.device.type

    def rounds(self, table: Dict[str, int]) -> int:
        return self.rounds_override or table[self.kind]

    def sync(self) -> None:
        if self.on_gpu:
            torch.cuda.synchronize(self.device)


# session information


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {cpu_name()} ({os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads)"


def git_info(root: str) -> Dict[str, object]:
    def git(*args):
        try:
            return subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "commit_short": commit[:10] if commit else None, "dirty": bool(status)}


def measure_copy_bandwidth(device: torch.device) -> float:
    """Copy bandwidth in GB/s (bytes read + bytes written per second) of one large copy.

    GPU: a 1 GiB device-to-device ``copy_`` timed with CUDA events, best of 10 after warm-up.
    CPU: a 128 MiB ``copy_`` (4x a typical L3), best of 5. This is the ceiling that achieved GB/s is compared with.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        nbytes = min(GiB, free // 4)
        src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
        dst = torch.empty_like(src)
        for _ in range(3):
            dst.copy_(src)
        torch.cuda.synchronize(device)
        best = math.inf
        for _ in range(10):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            best = min(best, start.elapsed_time(end) / 1e3)
        del src, dst
        torch.cuda.empty_cache()
        return 2 * nbytes / best / 1e9
    nbytes = 128 * 1024**2
    src = torch.rand(nbytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = math.inf
    for _ in range(5):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best / 1e9


def l2_bytes(device: torch.device) -> int:
    """The last-level cache the rotated inputs must not fit in: the GPU's L2, the CPU's L3."""
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 * 1024**2))
    size = 32 * 1024**2
    try:
        base = "/sys/devices/system/cpu/cpu0/cache"
        for index in sorted(os.listdir(base)):
            if not index.startswith("index"):
                continue
            with open(os.path.join(base, index, "size")) as f:
                text = f.read().strip()
            units = {"K": 1024, "M": 1024**2, "G": 1024**3}
            value = int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)
            size = max(size, value)
    except (OSError, ValueError, KeyError):
        pass
    return size


# skips


def triton_skip_reason(env: BenchEnv) -> Optional[str]:
    """Why the Triton backend cannot be benchmarked here, or None if it can."""
    if not env.on_gpu:
        return SKIP_NO_GPU_TRITON
    try:
        from xswin_fast import kernels
    except Exception as exc:  # pragma: no cover - depends on the environment
        return f"xswin_fast.kernels cannot be imported: {exc}"
    if kernels.INTERPRET or os.environ.get("TRITON_INTERPRET", "0") == "1":
        return (
            "Triton's interpreter is active (TRITON_INTERPRET=1 was set before xswin_fast.kernels was "
            "imported): its timings are meaningless; run the benchmarks in a fresh process without it"
        )
    return None


def registered_triton_ops() -> set:
    """Ops of ``xswin_fast.ops`` that have a Triton kernel (empty if Triton is unusable)."""
    try:
        from xswin_fast.kernels import adaln
    except Exception:  # pragma: no cover - depends on the environment
        return set()
    return {"window_attention", *adaln.OPS}


def compile_skip_reason(env: BenchEnv) -> Optional[str]:
    if env.on_gpu or env.cpu_full:
        return None
    return SKIP_CPU_COMPILE


# checks


def max_rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.detach().double(), expected.detach().double()
    if a.shape != e.shape:
        raise AssertionError(f"shape {tuple(a.shape)} != expected {tuple(e.shape)}")
    if not torch.isfinite(a).all():
        return math.inf
    denom = e.abs().max().item()
    return (a - e).abs().max().item() / max(denom, 1e-30)


def l2_rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.detach().double().flatten(), expected.detach().double().flatten()
    if a.shape != e.shape:
        raise AssertionError(f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    if not torch.isfinite(a).all():
        return math.inf
    return (a - e).norm().item() / max(e.norm().item(), 1e-30)


def check_close(what: str, actual, expected, tol: float, metric: Callable = max_rel_err) -> float:
    """Fail the benchmark if ``actual`` is not ``expected`` within ``tol``; return the error."""
    if isinstance(actual, (list, tuple)):
        if len(actual) != len(expected):
            raise AssertionError(f"{what}: {len(actual)} results, expected {len(expected)}")
        errs = [check_close(f"{what}[{i}]", a, e, tol, metric) for i, (a, e) in enumerate(zip(actual, expected))]
        return max(errs, default=0.0)
    if actual is None or expected is None:
        if (actual is None) != (expected is None):
            raise AssertionError(f"{what}: got {type(actual).__name__}, expected {type(expected).__name__}")
        return 0.0
    err = metric(actual, expected)
    if not err <= tol:
        raise AssertionError(
            f"{what}: wrong result, error {err:.3g} > tolerance {tol:.3g} against the reference "
            f"(a fast benchmark of a wrong result is a failure)"
        )
    return err


# inputs and timing


def rotation_count(env: BenchEnv, set_bytes: int, max_sets: int = 16) -> int:
    """How many input sets to rotate through so that together they are >= 4x the last-level
    cache (GPU L2, CPU L3), between 2 and ``max_sets``, at most 4 GiB in all."""
    n = math.ceil(4 * env.l2_bytes / max(set_bytes, 1))
    n = min(max(n, 2), max_sets)
    while n > 2 and n * set_bytes > 4 * GiB:
        n -= 1
    return n


class Rotating:
    """The callable handed to ``benchmark.pedantic``: call ``fn(*arg_sets[i])`` with i rotating
    over the input sets, and synchronise after every ``iterations``-th call, i.e. at the end of
    every round (pytest-benchmark runs exactly ``iterations`` calls per round)."""

    def __init__(self, env: BenchEnv, fn: Callable, arg_sets: Sequence[tuple], iterations: int = 1):
        self.env, self.fn, self.arg_sets, self.iterations = env, fn, list(arg_sets), iterations
        self.i = 0
        self.calls = 0

    def __call__(self):
        args = self.arg_sets[self.i]
        self.i = (self.i + 1) % len(self.arg_sets)
        out = self.fn(*args)
        self.calls += 1
        if self.calls % self.iterations == 0:
            self.env.sync()
        return out


def time_once(env: BenchEnv, fn: Callable, arg_sets: Sequence[tuple], reps: int = 3) -> float:
    """Median seconds of one synchronised call (for calibration only)."""
    times = []
    for r in range(reps):
        args = arg_sets[r % len(arg_sets)]
        env.sync()
        t0 = time.perf_counter()
        fn(*args)
        env.sync()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def run_benchmark(
    benchmark,
    env: BenchEnv,
    fn: Callable,
    arg_sets: Sequence[tuple],
    *,
    rounds: Dict[str, int],
    iterations: Optional[int] = None,
    first_calls: int = 3,
) -> Optional[float]:
    """Warm up, calibrate and time ``fn`` over the rotated ``arg_sets``; median seconds per call.

    ``first_calls`` untimed calls come first (compilation, autotuning, allocator); then, unless
    ``iterations`` is given, a few synchronised calls choose the iterations per round. Returns
    None when pytest-benchmark is disabled (then ``fn`` has run once more, as a smoke test).
    """
    for i in range(first_calls):
        fn(*arg_sets[i % len(arg_sets)])
    env.sync()
    if iterations is None:
        t = time_once(env, fn, arg_sets)
        iterations = int(min(max(math.ceil(TARGET_ROUND_S[env.kind] / max(t, 1e-9)), 1), MAX_ITERATIONS[env.kind]))
    runner = Rotating(env, fn, arg_sets, iterations)
    benchmark.pedantic(runner, rounds=env.rounds(rounds), warmup_rounds=WARMUP_ROUNDS[env.kind], iterations=iterations)
    env.sync()
    stats = getattr(benchmark, "stats", None)
    if stats is None:
        return None
    return stats.stats.median


def record(benchmark, env: BenchEnv, median: Optional[float], *, bytes_: float, flops: float, **info) -> None:
    """Put the case's description and metrics into ``benchmark.extra_info`` (saved in the JSON)."""
    extra = benchmark.extra_info
    extra.update(
        device=env.device_name,
        device_type=env.kind,
        copy_GBps=round(env.copy_GBps, 2),
        bytes=int(bytes_),
        flops=float(flops),
    )
    extra.update(info)
    if median:
        gbps = bytes_ / median / 1e9
        extra.update(
            median_s=median,
            GBps=round(gbps, 3),
            frac_of_copy_bw=round(gbps / env.copy_GBps, 4) if env.copy_GBps else None,
            TFLOPs=round(flops / median / 1e12, 5),
        )


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def randn(shape, env: BenchEnv, dtype=None, scale: float = 1.0, requires_grad: bool = False) -> torch.Tensor:
    t = torch.randn(shape, device=env.device, dtype=torch.float32).mul_(scale).to(dtype or env.dtype)
    return t.requires_grad_(requires_grad)
