"""Compiling: each recorded configuration compiled for its target with ptxas, its registers,
spills, shared memory, occupancy and SASS instruction mix, cached on disk."""
import contextlib
import hashlib
import json
import math
import os
import re
import signal
import subprocess
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Dict, Optional, Sequence

from .recording import config_key, init_worker
from .targets import TARGETS, TENSOR_CORE_OPCODES, occupancy

# part of every cached result's key: raised when what a result holds changes meaning
CHECK_VERSION = "3"


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


# every target's tensor-core opcodes (targets.TENSOR_CORE_OPCODES)
_MMA_OPCODES = {op for ops in TENSOR_CORE_OPCODES.values() for op in ops}


def sass_summary(sass: str) -> dict:
    """Tensor-core instructions (``targets.TENSOR_CORE_OPCODES``: HMMA = mma.sync, HGMMA = wgmma,
    UTC*MMA = tcgen05.mma) and global loads by width in bits (LDG: to registers, LDGSTS: cp.async
    to shared memory) in SASS (``nvdisasm``, ``cuobjdump -sass``)."""
    mma, loads = defaultdict(int), defaultdict(int)
    for m in _SASS_OP.finditer(sass):
        base, *mods = m.group(1).split(".")
        if base in _MMA_OPCODES:
            mma[base] += 1
        elif base in ("LDG", "LDGSTS"):
            loads[_load_width(mods)] += 1
    return dict(mma=dict(mma), loads={str(w): n for w, n in sorted(loads.items(), reverse=True)})




# a tt.dot in Triton's IR, one per line: its input precision is printed only where it is not the
# default IEEE ("tt.dot %a, %b, %c, inputPrecision = tf32 : tensor<64x32xf32> * ..." in Triton 3.7),
# then the type of the first operand
_TT_DOT = re.compile(r"\btt\.dot\s([^:]*):\s*tensor<(?:\d+x)+(\w+)>")
_PRECISION = re.compile(r"inputPrecision = (\w+)")
# operand types a tensor core multiplies in every precision (HMMA on every target from sm_80 on)
_TENSOR_CORE_TYPES = ("f16", "bf16")


def tensor_core_dots(ttir: str) -> int:
    """``tt.dot`` ops in Triton's IR that a tensor core runs: 16-bit float operands, or fp32
    operands at a reduced input precision (tf32, tf32x3, bf16x3, ...). An fp32 dot at IEEE
    precision (the kernels' choice when ``torch.backends.cuda.matmul.allow_tf32`` is False, as
    PyTorch's fp32 matmul) is a CUDA-core FFMA product on every target and is not counted; nor
    are fp64, 8-bit and integer dots (no kernel of the package has one)."""
    count = 0
    for m in _TT_DOT.finditer(ttir):
        precision = _PRECISION.search(m.group(1))
        element = m.group(2)
        count += element in _TENSOR_CORE_TYPES or (element == "f32" and precision is not None and precision.group(1) != "ieee")
    return count


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
                      **parse_ptxas(log.getvalue()), **sass_summary(_disassemble(kernel.asm["cubin"])),
                      tensor_core_dots=tensor_core_dots(kernel.asm["ttir"]))
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
    order = sorted(todo, key=lambda k: -_cost(specs[k]))
    with tempfile.TemporaryDirectory(prefix="xswin-compile-") as triton_cache, ProcessPoolExecutor(
            jobs, mp_context=multiprocessing.get_context("spawn"), initializer=init_worker, initargs=(triton_cache,)) as pool:
        futures = {pool.submit(compile_config, specs[k], timeout): k for k in order}
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
