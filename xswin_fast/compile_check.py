"""Offline GPU compile check: every Triton kernel configuration the package launches, compiled for
H100/H200 (sm_90a) and A100 (sm_80) on a machine without a GPU, with its resource use.

    python -m xswin_fast.compile_check                 # table + one-line summary
    python -m xswin_fast.compile_check --check         # exit 1 and list what breaks the rules
    python -m xswin_fast.compile_check --out DIR       # also DIR/compile_check.{md,json}
    python -m xswin_fast.compile_check --quick         # XSwin-S/2, XSwin-B/2, DiT-S/2 at 256 px, batch 64
    python -m xswin_fast.compile_check --list          # count the configurations, compile nothing

Method (docs/gpu_fitness.md):
 1. Launches are captured where Triton launches them: ``JITFunction.run`` is replaced by a
    recorder that runs Triton's own launch-time argument binder for the CUDA backend of the target
    (signature, divisibility specialisation, constexprs, options) and executes nothing. Any
    ``@triton.jit`` function launched is captured, whatever its name.
 2. The launches come from the public ops with ``backend="triton"`` on CPU tensors
    (``ops.dispatch.interpreter_active`` patched to True, ``TRITON_INTERPRET`` unset so the kernels
    take their GPU constants). The GPU is emulated through ``torch.cuda.get_device_properties`` /
    ``get_device_capability`` (132 SMs for sm_90a, 108 for sm_80).
 3. Public-op calls are recorded by driving every preset forward and backward (fp32, and bf16 /
    fp16 under ``torch.autocast`` like the trainer) at the native latent size, 2x and 4x, under
    ``NoCompute``: big aten ops run on the meta device only, so an XL model at 4x costs about a
    second. Each distinct call is then replayed at every batch of ``--batches`` on each target;
    a sweep of window-attention calls covers the op's accepted range (``sweep_calls``).
 4. Each distinct configuration (exact compile input) is compiled once with
    ``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` in parallel worker
    processes: ``ptxas -v`` gives registers and spills, the metadata the shared memory,
    ``nvdisasm`` the tensor-core instructions and global-load widths. A configuration whose
    shared memory exceeds the block limit cannot launch; it stops before ptxas (status NOFIT).
    Results are cached on disk by compile input + kernel source hash + Triton version.
"""
import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import types
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch

from .op_calls import MODEL_BATCH, PRECISIONS, NoCompute, OpCall, TensorLayout, drive_model

CHECK_VERSION = "1"


class Target(NamedTuple):
    """One GPU the kernels are compiled for, with the per-SM limits occupancy needs."""

    arch: int
    name: str
    gpu: str
    sms: int
    smem_block: int  # opt-in shared memory per block (bytes)
    smem_sm: int
    regs_sm: int = 65536
    warps_sm: int = 64
    blocks_sm: int = 32


TARGETS = {
    90: Target(90, "sm_90a", "H100/H200 SXM", 132, 232448, 233472),
    80: Target(80, "sm_80", "A100", 108, 166912, 167936),
}
SMEM_RESERVED_PER_BLOCK = 1024  # the driver's reservation per block on sm_80 and later
# batch 1 to 256: the ends, an odd batch (per-sample counts not divisible by 16), the benchmark's
# 64 and a power of two between (--batches for any other set)
DEFAULT_BATCHES = (1, 3, 16, 64, 256)


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
    from .ops import dispatch

    saved = dispatch.interpreter_active
    dispatch.interpreter_active = lambda: True
    try:
        yield
    finally:
        dispatch.interpreter_active = saved


def model_calls(preset: str, latent: int, precision: str, calls: Dict[OpCall, set], recorder: "LaunchRecorder") -> None:
    """Drive ``preset`` forward and backward at ``latent`` on an emulated sm_90a with automatic
    dispatch, as on a GPU (a call outside a kernel's limits runs on the reference): its public-op
    calls go to ``calls`` (every one: the replay with ``backend="triton"`` lists those outside the
    limits as rejected up front), its launches at the model batch to ``recorder``."""
    label = ("preset", preset, latent, precision)
    recorder.label = (label, None)
    with triton_on_cpu(), emulated_gpu(TARGETS[90]), recorder.active(TARGETS[90]):
        drive_model(preset, latent, precision, calls, backend=None)


def _window_call(form: str, window: Tuple[int, int], d: int, dtype: torch.dtype, heads: int = 2) -> OpCall:
    """A window-attention call in the models' layouts: "self" = SwinV2 (q, k, v views of one qkv
    projection, a (heads, N, N) permuted-view bias and the logit scale in fp32, cosine, shifted),
    "cross" = XSwin skip (q alone, k, v views of one kv projection, dot product, not shifted); on
    a 2x2-window map plus one token (padded edge windows)."""
    wh, ww = window
    H, W = 2 * wh + 1, 2 * ww + 1
    N = wh * ww
    if form == "self":
        qkv = torch.empty(MODEL_BATCH, H, W, 3, heads, d, dtype=dtype)
        q, k, v = (qkv[..., i, :, :] for i in range(3))
        bias = torch.empty(N, N, heads).permute(2, 0, 1)
        kwargs = dict(shift_size=(wh // 2, ww // 2), bias=TensorLayout.of(bias)._replace(requires_grad=True),
                      logit_scale=TensorLayout((heads,), (1,), 0, torch.float32, True))
    else:
        q = torch.empty(MODEL_BATCH, H, W, heads, d, dtype=dtype)
        kv = torch.empty(MODEL_BATCH, H, W, 2, heads, d, dtype=dtype)
        k, v = kv[..., 0, :, :], kv[..., 1, :, :]
        kwargs = {}
    args = tuple(TensorLayout.of(t)._replace(requires_grad=True) for t in (q, k, v)) + (window,)
    grad = TensorLayout((MODEL_BATCH, H, W, heads * d), (H * W * heads * d, W * heads * d, heads * d, 1), 0, dtype, False)
    return OpCall("window_attention", args, tuple(sorted(kwargs.items())), None, grad)


def sweep_calls(windows: Sequence[Tuple[int, int]], head_dims: Sequence[int], dtypes: Sequence[str]) -> Dict[OpCall, set]:
    """Window attention across the op's accepted range: every window and head dim listed, self and
    cross form, q, k, v in each precision."""
    calls = {}
    for window in windows:
        for d in head_dims:
            for form in ("self", "cross"):
                for precision in dtypes:
                    dtype = PRECISIONS[precision] or torch.float32
                    call = _window_call(form, window, d, dtype)
                    calls.setdefault(call, set()).add(("sweep", f"{form} {window[0]}x{window[1]} d{d}", None, precision))
    return calls


class LaunchRecorder:
    """Replaces ``JITFunction.run`` while active: each launch is specialised by Triton's own binder
    for ``target`` and recorded in ``configs[key] = spec`` and ``sources[key] -> labels``;
    nothing executes."""

    def __init__(self):
        self.configs: Dict[str, dict] = {}
        self.sources: Dict[str, set] = defaultdict(set)
        self.target: Optional[Target] = None
        self.label: Optional[tuple] = None
        self._binders = {}
        self._backends = {}

    @contextlib.contextmanager
    def active(self, target: Target):
        from triton.runtime.jit import JITFunction

        saved, recorder = JITFunction.run, self

        def run(fn, *args, grid, warmup, **kwargs):
            recorder.record(fn, args, kwargs)

        JITFunction.run, self.target = run, target
        try:
            yield self
        finally:
            JITFunction.run, self.target = saved, None

    def _bind(self, fn, args, kwargs):
        from triton import knobs
        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend
        from triton.runtime.jit import create_function_from_signature

        arch = self.target.arch
        if arch not in self._backends:
            self._backends[arch] = make_backend(GPUTarget("cuda", arch, 32))
        backend = self._backends[arch]
        if (fn, arch) not in self._binders:
            self._binders[(fn, arch)] = create_function_from_signature(fn.signature, fn.params, backend)
        kwargs = dict(kwargs, debug=kwargs.get("debug", fn.debug) or knobs.runtime.debug,
                      instrumentation_mode=knobs.compilation.instrumentation_mode)
        bound, specialization, options = self._binders[(fn, arch)](*args, **kwargs)
        return fn._pack_args(backend, kwargs, bound, specialization, options)

    def record(self, fn, args, kwargs) -> None:
        options, signature, constexprs, attrs = self._bind(fn, args, kwargs)
        declared = {p.num: p.name for p in fn.params if p.is_constexpr}
        spec = dict(
            module=fn.module, qualname=fn.fn.__qualname__, kernel=fn.fn.__name__, arch=self.target.arch,
            signature=dict(signature), constexprs=dict(sorted(constexprs.items())), attrs=dict(sorted(attrs.items())),
            options=dict(sorted(vars(options).items())),
            params={declared[p[0]]: v for p, v in constexprs.items() if len(p) == 1 and p[0] in declared},
        )
        key = config_key(spec)
        self.configs.setdefault(key, spec)
        self.sources[key].add(self.label)


def config_key(spec: dict, specialization: bool = True) -> str:
    """What makes two launches one compile: the kernel, target and every compile input; without
    ``specialization``, all but the divisibility-by-16 attributes of pointers and ints."""
    attrs = [(k, repr(v)) for k, v in spec["attrs"].items()] if specialization else []
    parts = (spec["module"], spec["qualname"], spec["arch"], sorted(spec["signature"].items()),
             [(k, repr(v)) for k, v in spec["constexprs"].items()], attrs,
             [(k, repr(v)) for k, v in spec["options"].items()])
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:24]


def merge_specializations(configs: Dict[str, dict], sources: Dict[str, set]) -> Tuple[Dict[str, dict], Dict[str, set]]:
    """One configuration per compile input up to divisibility: the most launched specialisation
    represents its group (alignment changes load widths, rarely the register budget), with the
    sources of the whole group."""
    groups = defaultdict(list)
    for key, spec in configs.items():
        groups[config_key(spec, specialization=False)].append(key)
    merged_configs, merged_sources = {}, {}
    for keys in groups.values():
        best = max(keys, key=lambda k: (len(sources[k]), k))
        merged_configs[best] = configs[best]
        merged_sources[best] = set().union(*(sources[k] for k in keys))
    return merged_configs, merged_sources


def replay(calls: Sequence[Tuple[int, OpCall, set]], batches: Sequence[Optional[int]], target: Target,
           recorder: LaunchRecorder, consulted: list) -> Tuple[list, list]:
    """Run every (index, call, labels) at every batch on ``target``, launches recorded with the
    source (index, batch); returns (rejected up front, errors) as (label, batch, message) lists.
    A ValueError from the op is a rejection up front."""
    rejected, errors = [], []
    with triton_on_cpu(), emulated_gpu(target, consulted), NoCompute(), recorder.active(target):
        for index, call, labels in calls:
            for batch in batches:
                recorder.label = (index, batch)
                try:
                    call.run(batch)
                except ValueError as exc:
                    rejected.append((sorted(labels)[0], batch, f"{type(exc).__name__}: {exc}"))
                except Exception as exc:  # noqa: BLE001 - every other failure is a finding
                    errors.append((sorted(labels)[0], batch, f"{type(exc).__name__}: {exc}"))
    return rejected, errors


def replay_chunk(calls, batches, arches) -> tuple:
    """``replay`` on every target (a worker-process task): configs, sources, rejected, errors,
    and how often the emulated GPU was consulted."""
    recorder, consulted, rejected, errors = LaunchRecorder(), [], [], []
    for arch in arches:
        r, e = replay(calls, batches, TARGETS[arch], recorder, consulted)
        rejected += r
        errors += e
    return recorder.configs, dict(recorder.sources), rejected, errors, len(consulted)


def replay_all(groups, arches, jobs: int) -> tuple:
    """``replay_chunk`` over [(indexed calls, batches)] in ``jobs`` processes, merged."""
    import multiprocessing

    worker = __import__("xswin_fast.compile_check").compile_check
    configs, sources, rejected, errors, consulted = {}, defaultdict(set), [], [], 0
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                             initargs=(tempfile.gettempdir(),)) as pool:
        futures = [pool.submit(worker.replay_chunk, calls[i::jobs * 4], batches, arches)
                   for calls, batches in groups for i in range(jobs * 4) if calls[i::jobs * 4]]
        for future in as_completed(futures):
            c, s, r, e, n = future.result()
            configs.update(c)
            for key, src in s.items():
                sources[key] |= src
            rejected += r
            errors += e
            consulted += n
    return configs, sources, rejected, errors, consulted


class _NoFit(Exception):
    pass


def parse_ptxas(log: str) -> dict:
    """Registers, spill bytes and stack frame from ``ptxas -v`` output (one kernel)."""
    out = dict(regs=None, spill_stores=0, spill_loads=0, stack=0)
    m = re.search(r"Used (\d+) registers", log)
    if m:
        out["regs"] = int(m.group(1))
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    if m:
        out["stack"], out["spill_stores"], out["spill_loads"] = map(int, m.groups())
    return out


_SASS_OP = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*(?:\.[A-Z0-9_]+)*)")


def _load_width(modifiers: Sequence[str]) -> int:
    for width in ("128", "64"):
        if width in modifiers:
            return int(width)
    if {"U16", "S16"} & set(modifiers):
        return 16
    if {"U8", "S8"} & set(modifiers):
        return 8
    return 32


def sass_summary(sass: str) -> dict:
    """Tensor-core instructions (HMMA = mma.sync, HGMMA = wgmma) and global loads by width in bits
    (LDG: to registers, LDGSTS: cp.async to shared memory) in SASS (``nvdisasm``, ``cuobjdump -sass``)."""
    mma, loads = defaultdict(int), defaultdict(int)
    for m in _SASS_OP.finditer(sass):
        base, *mods = m.group(1).split(".")
        if base in ("HMMA", "HGMMA"):
            mma[base] += 1
        elif base in ("LDG", "LDGSTS"):
            loads[_load_width(mods)] += 1
    return dict(mma=dict(mma), loads={str(w): n for w, n in sorted(loads.items(), reverse=True)})


def occupancy(target: Target, regs: int, shared: int, warps: int) -> float:
    """Resident warps per SM / the SM's maximum, from registers, shared memory and warps."""
    by_warps = target.warps_sm // warps
    regs_per_warp = math.ceil(max(regs, 1) * 32 / 256) * 256
    by_regs = target.regs_sm // regs_per_warp // warps
    by_smem = target.smem_sm // (shared + SMEM_RESERVED_PER_BLOCK)
    return min(target.blocks_sm, by_warps, by_regs, by_smem) * warps / target.warps_sm


def _disassemble(cubin: bytes) -> str:
    """The SASS of a cubin: ``nvdisasm`` (shipped with Triton) without its dataflow analysis, the
    same instructions as ``cuobjdump -sass`` (which runs it) in 0.23 instead of 0.31 CPU-s, most
    of either being the tool's start-up, paid once per configuration."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([tool, "--no-dataflow", "--print-code", f.name], capture_output=True, text=True,
                              timeout=300).stdout


def _alarm(signum, frame):
    raise TimeoutError


def compile_config(spec: dict, timeout: float) -> dict:
    """Compile one configuration for its target (in a worker process): status OK / NOFIT (shared
    memory over the block limit, stopped before ptxas) / FAIL / TIMEOUT, resources and SASS mix."""
    import importlib
    import io

    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target, log, result = TARGETS[spec["arch"]], io.StringIO(), dict(status="FAIL")
    start = time.time()

    def stages_hook(*args):
        if not args:
            return "xswin_fast.compile_check", CHECK_VERSION
        stages = args[1]
        make_cubin = stages["cubin"]

        def cubin(src, metadata):
            result["shared"] = metadata["shared"]
            if metadata["shared"] > target.smem_block:
                raise _NoFit
            with contextlib.redirect_stdout(log):
                return make_cubin(src, metadata)

        stages["cubin"] = cubin

    knobs.runtime.add_stages_inspection_hook = stages_hook
    knobs.nvidia.dump_ptxas_log = True
    knobs.compilation.always_compile = True
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(max(1, int(timeout)))
    try:
        fn = getattr(importlib.import_module(spec["module"]), spec["qualname"])
        src = ASTSource(fn, spec["signature"], spec["constexprs"], spec["attrs"])
        kernel = triton.compile(src, target=GPUTarget("cuda", spec["arch"], 32), options=spec["options"])
        result.update(status="OK", shared=kernel.metadata.shared, num_warps=kernel.metadata.num_warps,
                      **parse_ptxas(log.getvalue()), **sass_summary(_disassemble(kernel.asm["cubin"])))
        result["occupancy"] = occupancy(target, result["regs"], result["shared"], result["num_warps"])
    except _NoFit:
        result.update(status="NOFIT", error=f"{result['shared']} B of shared memory > {target.smem_block} B per "
                                            f"block on {target.name}: OutOfResources at launch")
    except TimeoutError:
        result.update(status="TIMEOUT", error=f"no result within {timeout:.0f} s")
    except Exception as exc:  # noqa: BLE001 - a compile error is a result
        result.update(status="FAIL", error=f"{type(exc).__name__}: {str(exc)[-2000:]}")
    finally:
        signal.alarm(0)
        knobs.runtime.add_stages_inspection_hook = None
    result["seconds"] = round(time.time() - start, 1)
    return result


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "xswin_fast", "compile_check")


def cache_key(spec: dict) -> str:
    """The compile input, the kernel's source (Triton's hash of the function, the jit functions it
    calls and the globals it reads), Triton's version and this check's version."""
    import importlib

    import triton

    fn = getattr(importlib.import_module(spec["module"]), spec["qualname"])
    return hashlib.sha256(repr((config_key(spec), fn.cache_key, triton.__version__, CHECK_VERSION)).encode()).hexdigest()


def _init_worker(triton_cache: str) -> None:
    os.environ["TRITON_CACHE_DIR"] = triton_cache
    torch.set_num_threads(1)


def compile_all(specs: Dict[str, dict], jobs: int, timeout: float, cache_dir: Optional[str],
                progress=print) -> Dict[str, dict]:
    """Results by config key: from the cache where present, the rest compiled in ``jobs`` processes
    (the slowest-looking first, so the pool ends together)."""
    import multiprocessing

    results, todo = {}, {}
    for key, spec in specs.items():
        path = os.path.join(cache_dir, cache_key(spec) + ".json") if cache_dir else None
        if path and os.path.exists(path):
            with open(path) as f:
                results[key] = dict(json.load(f), cached=True)
        else:
            todo[key] = path
    if not todo:
        return results
    if cache_dir:
        os.makedirs(cache_dir, exist_ok=True)
    worker = __import__("xswin_fast.compile_check").compile_check
    order = sorted(todo, key=lambda k: -_cost(specs[k]))
    with tempfile.TemporaryDirectory(prefix="xswin-compile-") as triton_cache, ProcessPoolExecutor(
            jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker, initargs=(triton_cache,)) as pool:
        futures = {pool.submit(worker.compile_config, specs[k], timeout): k for k in order}
        for i, future in enumerate(as_completed(futures), 1):
            key = futures[future]
            results[key] = future.result()
            if todo[key]:
                with open(todo[key], "w") as f:
                    json.dump(results[key], f)
            spec = specs[key]
            progress(f"  [{i}/{len(todo)}] {spec['kernel']} {TARGETS[spec['arch']].name}: {results[key]['status']} "
                     f"in {results[key]['seconds']} s")
    return results


def _cost(spec: dict) -> float:
    """A guess of compile time: tile sizes, backward, fp32 (for scheduling only)."""
    size = math.prod(v for v in spec["params"].values() if isinstance(v, int) and not isinstance(v, bool) and v > 1)
    return size * (4 if "bwd" in spec["kernel"] else 1) * (3 if "fp32" in spec["signature"].values().__repr__() else 1)


def record_preset(preset: str, factors: Sequence[int], precisions: Sequence[str]) -> Tuple[dict, dict]:
    """(public-op calls -> labels, launches seen at the model batch on sm_90a) of one preset at
    each latent-size factor and precision (a worker-process task)."""
    from .models.registry import PRESETS

    torch.set_flush_denormal(True)
    calls, seen = {}, LaunchRecorder()
    native = PRESETS[preset][1]["input_size"]
    for factor in factors:
        for precision in precisions:
            model_calls(preset, native * factor, precision, calls, seen)
    return calls, seen.configs


def record_presets(presets: Sequence[str], factors, precisions, jobs: int, progress=print) -> Tuple[dict, dict]:
    """``record_preset`` over ``presets`` in ``jobs`` processes, merged."""
    import multiprocessing

    calls, seen = {}, {}
    worker = __import__("xswin_fast.compile_check").compile_check
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                             initargs=(tempfile.gettempdir(),)) as pool:
        futures = {pool.submit(worker.record_preset, p, factors, precisions): p for p in presets}
        for i, future in enumerate(as_completed(futures), 1):
            part, configs = future.result()
            for call, labels in part.items():
                calls.setdefault(call, set()).update(labels)
            seen.update(configs)
            progress(f"  [{i}/{len(presets)}] {futures[future]}: {len(part)} op calls")
    return calls, seen


def _label(label: tuple) -> str:
    kind, name, latent, precision = label
    return f"{name}@{latent} {precision}" if kind == "preset" else f"sweep {name} {precision}"


def build_rows(specs: Dict[str, dict], results: Dict[str, dict], sources: Dict[str, set],
               calls: Sequence[Tuple[int, OpCall, set]]) -> List[dict]:
    """One row per configuration and target: what it is, what it costs, where it is launched from."""
    rows = []
    for key, spec in specs.items():
        labels = {label for index, _ in sources[key] for label in calls[index][2]}
        batches = sorted({b for _, b in sources[key] if b is not None})
        pointers = sorted({v[1:] for v in spec["signature"].values() if isinstance(v, str) and v.startswith("*")})
        rows.append(dict(
            key=key, kernel=spec["kernel"], target=TARGETS[spec["arch"]].name,
            config=" ".join(f"{n}={v}" for n, v in spec["params"].items()), pointers="+".join(pointers),
            num_warps=spec["options"]["num_warps"], num_stages=spec["options"]["num_stages"],
            preset_precisions=sorted({lab[3] for lab in labels if lab[0] == "preset"}),
            precisions=sorted({lab[3] for lab in labels}), sources=sorted(_label(lab) for lab in labels),
            batches=batches, **{k: v for k, v in results.get(key, dict(status="NOT COMPILED")).items() if k != "num_warps"},
        ))
    return sorted(rows, key=lambda r: (r["kernel"], r["target"], r["config"], r["pointers"]))


RULES = ("fit", "half-spills", "fp32-spills")


def problems(rows: Sequence[dict], errors: Sequence[tuple] = ()) -> List[Tuple[str, str]]:
    """The rules (docs/gpu_fitness.md) as (rule, finding) pairs: "fit": every launched
    configuration compiles and fits on both targets, and no replayed launch fails; "half-spills": no
    bf16/fp16 configuration of a preset spills on sm_90a; "fp32-spills": no fp32 configuration
    spills below 64 registers."""
    out = [("fit", f"launch error ({_label(label)}, batch {batch}): {msg}") for label, batch, msg in errors]
    for r in rows:
        where = f"{r['kernel']} [{r['config']}; {r['pointers']}; {r['num_warps']} warps] on {r['target']}"
        spill = r.get("spill_stores", 0) + r.get("spill_loads", 0)
        if r["status"] != "OK":
            out.append(("fit", f"{where}: {r['status']}: {r.get('error')}"))
        elif spill and r["target"] == TARGETS[90].name and {"bf16", "fp16"} & set(r["preset_precisions"]):
            out.append(("half-spills", f"{where}: spills {r['spill_stores']} B / {r['spill_loads']} B at {r['regs']} "
                        f"registers (a 16-bit preset configuration must not spill)"))
        elif spill and r["regs"] < 64 and "fp32" in r["precisions"]:
            out.append(("fp32-spills", f"{where}: spills {r['spill_stores']} B / {r['spill_loads']} B at {r['regs']} "
                        f"registers (an fp32 configuration must not spill below 64 registers)"))
    return out


def summary(rows: Sequence[dict], rejected: Sequence[tuple], found: Sequence[str]) -> str:
    per = []
    for target in sorted({r["target"] for r in rows}, reverse=True):
        mine = [r for r in rows if r["target"] == target]
        status = defaultdict(int)
        for r in mine:
            status[r["status"]] += 1
        spills = sum(1 for r in mine if r.get("spill_stores"))
        tc = sum(1 for r in mine if r.get("mma"))
        per.append(f"{target}: {status['OK']}/{len(mine)} OK" + "".join(f", {n} {s}" for s, n in sorted(status.items())
                                                                         if s != "OK") + f", {spills} spill, {tc} tensor cores")
    return (f"compile-check: {len({r['key'] for r in rows})} kernel configurations; " + "; ".join(per) +
            f"; {len(rejected)} calls rejected up front; {len(found)} problems")


def _loads(r: dict) -> str:
    return " ".join(f"{n}x{w}" for w, n in (r.get("loads") or {}).items()) or "-"


def markdown(rows: Sequence[dict], header: str) -> str:
    lines = [header, "",
             "| kernel | target | config | pointers | warps | status | regs | spill st/ld (B) | smem (KiB) "
             "| occupancy | tensor cores | global loads (count x bits) | launched by |",
             "|---|---|---|---|---:|---|---:|---:|---:|---:|---|---|---|"]
    for r in rows:
        ok = r["status"] == "OK"
        mma = ", ".join(f"{k} {v}" for k, v in (r.get("mma") or {}).items()) or "none"
        src = ", ".join(r["sources"][:3]) + (f" (+{len(r['sources']) - 3})" if len(r["sources"]) > 3 else "")
        batches = f"; B {r['batches'][0]}-{r['batches'][-1]}" if r["batches"] else ""
        smem = f"{r['shared'] / 1024:.1f}" if r.get("shared") is not None else "-"
        lines.append(
            f"| {r['kernel']} | {r['target']} | {r['config']} | {r['pointers']} | {r['num_warps']} | {r['status']} | "
            f"{r['regs'] if ok else '-'} | {str(r['spill_stores']) + '/' + str(r['spill_loads']) if ok else '-'} | "
            f"{smem} | {format(r['occupancy'], '.0%') if ok else '-'} | {mma if ok else '-'} | "
            f"{_loads(r) if ok else '-'} | {src}{batches} |")
    return "\n".join(lines)


def kernel_summary(rows: Sequence[dict]) -> str:
    """Per kernel and target: configurations, worst registers / spill / shared memory / occupancy."""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["kernel"], r["target"])].append(r)
    lines = ["| kernel | target | configs | not OK | max regs | max spill (B) | max smem (KiB) | min occupancy "
             "| tensor cores |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for (kernel, target), rs in sorted(groups.items()):
        ok = [r for r in rs if r["status"] == "OK"]
        mma = sorted({k for r in ok for k in (r.get("mma") or {})}) or ["none"]
        lines.append(
            f"| {kernel} | {target} | {len(rs)} | {len(rs) - len(ok)} | {max((r['regs'] for r in ok), default='-')} | "
            f"{max((r['spill_stores'] for r in ok), default='-')} | "
            f"{max((r.get('shared') or 0 for r in rs), default=0) / 1024:.1f} | "
            f"{format(min(r['occupancy'] for r in ok), '.0%') if ok else '-'} | {', '.join(mma)} |")
    return "\n".join(lines)


def _ints(text: str) -> List[int]:
    return [int(x) for x in text.split(",") if x]


def _windows(text: str) -> List[Tuple[int, int]]:
    out = []
    for w in text.split(","):
        h, _, v = w.partition("x")
        out.append((int(h), int(v or h)))
    return out


def parse_args(argv=None) -> argparse.Namespace:
    from .models.registry import PRESETS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="*", default=list(PRESETS), help="preset names (default: all)")
    p.add_argument("--factors", default="1,2,4", help="latent sizes as multiples of each preset's native one")
    p.add_argument("--precisions", default="fp32,bf16,fp16", help="fp32, and bf16 / fp16 under autocast")
    p.add_argument("--batches", default=",".join(map(str, DEFAULT_BATCHES)), help="batches the calls are replayed at")
    p.add_argument("--targets", default="90,80", help="compute capabilities: 90 (sm_90a) and/or 80 (sm_80)")
    p.add_argument("--sweep-windows", default="1,2,2x4,3x5,4,7,8,12,16", help="window-attention sweep: windows "
                   "(w or hxw); empty for none")
    p.add_argument("--sweep-head-dims", default="16,48,64,128", help="window-attention sweep: head dims")
    p.add_argument("--sweep-batch", type=int, default=64, help="batch of the sweep's calls")
    p.add_argument("--quick", action="store_true", help="XSwin-S/2, XSwin-B/2 and DiT-S/2 at their native size, "
                   "fp32 and bf16, batch 64, no sweep")
    p.add_argument("--jobs", type=int, default=min(os.cpu_count() or 1, 8), help="worker processes")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per compile")
    p.add_argument("--cache-dir", default=default_cache_dir(), help="results by compile input + kernel source "
                   "+ Triton version")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the result cache")
    p.add_argument("--list", action="store_true", help="record and replay, print the configurations per kernel, "
                   "compile nothing")
    p.add_argument("--out", default=None, help="write compile_check.md and compile_check.json here")
    p.add_argument("--check", action="store_true", help="exit 1 and list every configuration that breaks the rules")
    p.add_argument("--all-specializations", action="store_true", help="compile every divisibility-by-16 "
                   "specialisation of a configuration, not only its most launched one")
    p.add_argument("--rules", default=",".join(RULES), help=f"the rules --check enforces, of {', '.join(RULES)}; "
                   "findings of the others are listed as not enforced")
    args = p.parse_args(argv)
    args.rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    if set(args.rules) - set(RULES):
        p.error(f"--rules: unknown {sorted(set(args.rules) - set(RULES))}; available: {', '.join(RULES)}")
    if args.quick:
        args.presets, args.factors, args.precisions = ["XSwin-S/2", "XSwin-B/2", "DiT-S/2"], "1", "fp32,bf16"
        args.batches, args.sweep_windows = "64", ""
    unknown = [n for n in args.presets if n not in PRESETS]
    if unknown:
        p.error(f"--presets: unknown {unknown}; available: {', '.join(PRESETS)}")
    args.targets = [TARGETS[a] for a in _ints(args.targets) if a in TARGETS] or p.error("--targets: 90 and/or 80")
    return args


def run_check(args: argparse.Namespace, progress=print) -> Tuple[List[dict], List[str], str]:
    """Record, replay, compile: (rows, problems, summary line)."""
    import triton

    from . import kernels

    if kernels.INTERPRET:
        raise RuntimeError("xswin_fast.kernels was imported under TRITON_INTERPRET=1; the check needs GPU constants")
    start = time.time()
    factors, precisions = _ints(args.factors), args.precisions.split(",")
    progress(f"recording {len(args.presets)} presets x latent {factors}x x {precisions} ...")
    calls, seen = record_presets(args.presets, factors, precisions, args.jobs, progress)
    again = LaunchRecorder()
    indexed = [(i, call, labels) for i, (call, labels) in enumerate(calls.items())]
    replay(indexed, [None], TARGETS[90], again, [])
    found = [] if set(again.configs) == set(seen) else [("fit",
        f"replaying the recorded op calls at the model batch gives {len(set(again.configs) ^ set(seen))} launch "
        f"configurations that differ from the model runs' own: the replay is not faithful")]
    sweep = sweep_calls(_windows(args.sweep_windows), _ints(args.sweep_head_dims), precisions) if args.sweep_windows else {}
    swept = [(len(indexed) + i, call, labels) for i, (call, labels) in enumerate(sweep.items())]
    progress(f"recorded in {time.time() - start:.0f} s; replaying {len(indexed)} op calls from the presets at batches "
             f"{args.batches} and {len(swept)} from the sweep at batch {args.sweep_batch} on "
             f"{', '.join(t.name for t in args.targets)} ...")
    configs, sources, rejected, errors, consulted = replay_all(
        [(indexed, _ints(args.batches)), (swept, [args.sweep_batch])], [t.arch for t in args.targets], args.jobs)
    if not args.all_specializations:
        configs, sources = merge_specializations(configs, sources)
    progress(f"{len(configs)} kernel configurations; recorded and replayed in {time.time() - start:.0f} s")
    if not consulted:
        progress("note: no launch consulted the emulated GPU (torch.cuda.get_device_properties): launch geometries "
                 "that depend on the SM count are the kernels' CPU-tensor choices")
    if args.list:
        rows = build_rows(configs, {}, sources, indexed + swept)
        return rows, found, f"compile-check: {len(configs)} kernel configurations listed, none compiled (--list)"
    results = compile_all(configs, args.jobs, args.timeout, None if args.no_cache else args.cache_dir, progress)
    rows = build_rows(configs, results, sources, indexed + swept)
    found += problems(rows, errors)
    line = summary(rows, rejected, found) + f"; {time.time() - start:.0f} s (triton {triton.__version__})"
    return rows, found, line


def main(argv=None) -> int:
    if os.environ.get("TRITON_INTERPRET", "0") != "0":
        # the kernels read TRITON_INTERPRET when imported: start over without it
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        os.execve(sys.executable, [sys.executable, "-m", "xswin_fast.compile_check", *(argv or sys.argv[1:])], env)
    args = parse_args(argv)
    rows, findings, line = run_check(args)
    print(kernel_summary(rows))
    found = [f"{finding} [{rule}]" for rule, finding in findings if rule in args.rules]
    waived = [f"{finding} [{rule}]" for rule, finding in findings if rule not in args.rules]
    if found:
        print(f"\n{len(found)} problems:\n" + "\n".join(f"- {p}" for p in found))
    if waived:
        print(f"\n{len(waived)} findings of rules not enforced in this run ({', '.join(sorted(set(RULES) - set(args.rules)))}):\n"
              + "\n".join(f"- {p}" for p in waived))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        header = f"# Offline GPU compile check\n\n`python -m xswin_fast.compile_check`\n\n{line}"
        with open(os.path.join(args.out, "compile_check.md"), "w") as f:
            f.write(markdown(rows, header) + "\n")
        with open(os.path.join(args.out, "compile_check.json"), "w") as f:
            json.dump(dict(summary=line, rules=list(args.rules), problems=found, not_enforced=waived, rows=rows), f,
                      indent=1, default=str)
    print(line)
    return 1 if args.check and found else 0


if __name__ == "__main__":
    sys.exit(main())
