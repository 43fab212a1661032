"""Configuration of the benchmark suite: ``python -m pytest benchmarks/ --benchmark-only``.

* Triton's interpreter is for testing and its timings are meaningless, so TRITON_INTERPRET is
  switched off here, before anything imports ``xswin_fast.kernels`` (Triton reads it when
  ``@triton.jit`` decorates). If the kernels were already imported under the interpreter, the
  Triton cases skip with that reason.
* The session fixture ``bench_env`` picks the device (CUDA if available, else the CPU), the
  kernel dtype (bf16 on a GPU, fp32 on the CPU) and measures the device's copy bandwidth once.
* ``--bench-threads`` (default ``auto``, the policy of train.py/sample.py/evaluate.py ``--threads``:
  one CPU thread when the load average shows other work) sets torch's thread count once, at
  configuration, before any case runs.
* ``pytest_benchmark_update_machine_info`` stamps the JSON (``--benchmark-json``) with the device,
  its copy bandwidth, the CPU threads, the date, the git commit and the command line, which
  ``report.py`` prints.
"""
import os
import sys

_INTERPRET_REQUESTED = os.environ.get("TRITON_INTERPRET", "0") == "1"
if _INTERPRET_REQUESTED and "xswin_fast.kernels" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "0"

import datetime  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import benchutils  # noqa: E402
from xswin_fast.cli.process import apply_threads  # noqa: E402
from xswin_fast.runs.config import parse_threads  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ENV_KEY = pytest.StashKey()
_THREADS_KEY = pytest.StashKey()

# every compiled case is a new shape of the same function: keep dynamo from giving up (its
# default limit is 8 recompilations) or from switching to dynamic shapes
for _name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
    if hasattr(torch._dynamo.config, _name):
        setattr(torch._dynamo.config, _name, 1024)


def pytest_addoption(parser):
    group = parser.getgroup("xswin_fast benchmarks")
    group.addoption(
        "--bench-cpu-full",
        action="store_true",
        default=False,
        help="on a machine without a GPU, also run the torch.compile/FlexAttention cases and the large "
        "shapes (at CPU batch sizes); slow, and no substitute for GPU numbers",
    )
    group.addoption(
        "--bench-threads",
        type=parse_threads,
        default="auto",
        help="CPU threads: N, 0 (torch's default) or auto (torch's default on an idle machine, one when the "
        "load average shows other work), as the CLIs' --threads",
    )
    group.addoption("--bench-rounds", type=int, default=None, help="timed rounds per case (default: 30 kernel / 10 model rounds on a GPU, 5 / 3 on the CPU)")
    group.addoption(
        "--bench-model-sizes",
        default=None,
        help="comma-separated preset sizes of the model groups (default: S,B on a GPU, S on the CPU)",
    )
    group.addoption(
        "--bench-latents",
        default=None,
        help="comma-separated latent sizes of the model groups (default: 32,64,128 on a GPU = 256/512/1024 px; 16 on the CPU)",
    )


def pytest_configure(config):
    # once per session, before any case: a thread count changed mid-run would skew the comparisons
    requested = config.getoption("--bench-threads")
    config.stash[_THREADS_KEY] = (requested, apply_threads(requested))


def _make_env(config) -> benchutils.BenchEnv:
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    env = benchutils.BenchEnv(
        device=device,
        device_name=benchutils.device_name(device),
        dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
        copy_GBps=0.0,
        l2_bytes=benchutils.l2_bytes(device),
        cpu_full=bool(config.getoption("--bench-cpu-full")),
        rounds_override=config.getoption("--bench-rounds"),
        triton_interpret_disabled=_INTERPRET_REQUESTED,
    )
    return env


def get_env(config) -> benchutils.BenchEnv:
    env = config.stash.get(_ENV_KEY, None)
    if env is None:
        env = _make_env(config)
        config.stash[_ENV_KEY] = env
    return env


@pytest.fixture(scope="session")
def bench_env(pytestconfig) -> benchutils.BenchEnv:
    """The session's device, dtype and measured copy bandwidth (measured once, on first use)."""
    env = get_env(pytestconfig)
    if not env.copy_GBps:
        env.copy_GBps = benchutils.measure_copy_bandwidth(env.device)
    return env


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_report_header(config):
    env = get_env(config)
    lines = [f"xswin_fast benchmarks on {env.device_name}; kernel dtype {benchutils.dtype_name(env.dtype)}"]
    if not env.on_gpu:
        lines.append(
            "no CUDA device: GPU/Triton cases skip; the CPU runs the reference path and small model cases"
            + (" plus torch.compile/FlexAttention and large shapes (--bench-cpu-full)" if env.cpu_full else "")
        )
    requested, threads = config.stash[_THREADS_KEY]
    lines.append(f"CPU threads: {threads} (--bench-threads {requested})")
    if env.triton_interpret_disabled:
        lines.append("TRITON_INTERPRET=1 was set: switched off for the benchmarks (interpreter timings are meaningless)")
    return lines


def pytest_benchmark_update_machine_info(config, machine_info):
    env = get_env(config)
    from xswin_fast.ops.dispatch import interpreter_active

    triton_ops = sorted(benchutils.registered_triton_ops())
    info = {
        "device": env.device_name,
        "device_type": env.kind,
        "copy_GBps": round(env.copy_GBps, 2) if env.copy_GBps else None,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton_kernels": triton_ops,
        "triton_interpreter": interpreter_active(),
        "command": " ".join(
            [f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES") if k in os.environ]
            + ["python -m pytest"]
            + list(config.invocation_params.args)
        ),
        "cpu_full": env.cpu_full,
        "cpu_threads": config.stash[_THREADS_KEY][1],
        "cpu_threads_requested": config.stash[_THREADS_KEY][0],
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:  # pragma: no cover
        info["triton"] = None
    info.update(benchutils.git_info(ROOT))
    machine_info["xswin_bench"] = info
