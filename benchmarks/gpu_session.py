"""One prepared GPU session: everything a CUDA machine should tell us, in under 8 minutes.

    python benchmarks/gpu_session.py              # on a CUDA machine (make gpu-session)
    python benchmarks/gpu_session.py --dry-run    # anywhere: every step short of the GPU (CI)

Steps (budgets add up to 460 s), each a subprocess with its own time budget (a step that overruns is killed and reported,
the session goes on):

1. ``kernel-tests``: the kernel test files compiled for the GPU, not interpreted
   (``TRITON_INTERPRET=0``; tensors default to CUDA through the ``cuda_default_device`` plugin),
   bf16 cases included.
2. ``window-attention``: the benchmark suite's window attention at the XSwin-S/2 and XSwin-B/2
   stage shapes, forward and forward+backward: reference, ``torch.compile``, FlexAttention, Triton;
   reference vs Triton at the paper preset's 2x2 windows; the backward alone through the split,
   the split at two pipelining stages and the blocked split at the two 16x16 stages.
   Bytes and the ideal speedup come from the traffic model (``xswin_fast.traffic``).
3. ``adaln``: the adaLN forms at XSwin-S/2's first stage, eager vs ``torch.compile`` vs Triton.
4. ``models``: XSwin-S/2 vs DiT-S/2 training steps (images/s) at 256 and 512 px.
5. ``report``: ``benchmarks/report.py`` on each benchmark JSON (markdown + plots), achieved GB/s
   over the measured copy bandwidth included.

Optional, budgeted apart (``--comparison``, off by default; 42 cells per objective, their GPU time
not yet measured): ``comparison-eps`` and ``comparison-flow``, the backbone
comparison's full version (docs/comparison.md): the seven digits-scale families (XSwin, USwin,
UViT, DiT, DiffiT, ASCEND, IU-ViT) on both datasets, 3 seeds, the CPU run's recipe, with the
eps objective and the flow column, on ``--device cuda``, into ``docs/results/compare-gpu-eps/``
and ``docs/results/compare-gpu-flow/`` (run folders in ``results/``). Each step has its own
budget (``--comparison-budget``); a step that runs out leaves its finished cells, and the same
command resumes the rest.

First the card (``device_record``): name, compute capability, SM count, clocks and the measured
copy bandwidth, against the card's published peak bandwidth and bf16 TFLOP/s
(``device_record.CARD_LIMITS``); the dry run records the representative card of each
architecture the kernels are built for (sm_80, sm_86, sm_89, sm_90a, sm_100a, sm_120) from
``kernels.device`` and requires each to have published limits.

Everything goes to ``benchmarks/results/<gpu>-<date>-<commit>/`` (``--out`` to override):
``session.json`` (steps, commands, budgets, times, exit codes), ``README.md``, the benchmark
JSONs and one report folder per benchmark step. ``--dry-run`` imports the suite, lists the shapes,
collects every pytest step (each must select at least one test) and writes the same files with
``dry run`` statuses to a temporary folder.
"""
import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, NamedTuple

import device_record

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
SESSION_BUDGET_S = 480
# every implementation at stage 1 of XSwin-S/2 and XSwin-B/2; reference vs Triton at stage 2 and
# at the paper preset's first stage (2x2 windows: the kernels' SMALL path)
# (each torch.compile / FlexAttention case compiles for ~10 s)
XSWIN_CASES = "xswin-s2-s1 or xswin-b2-s1 or ((xswin-s2-s2 or xswin-b2-s2 or paper-s1) and (reference or triton))"
COMPARISON_MODELS = "XSwin-digits,USwin-digits,UViT-digits,DiT-digits,DiffiT-digits,ASCEND-digits,IUViT-digits"
COMPARISON_BUDGET_S = 3600
# the least time a dry run's step gets: it imports torch and collects on a CPU, which on a loaded
# machine takes longer than some steps' GPU budgets (docs/benchmarks.md)
DRY_RUN_TIMEOUT_S = 300


def _selected(output: str) -> int:
    """Tests pytest's ``--collect-only -q`` selected: it lists one test id per line."""
    return sum(1 for line in output.splitlines() if "::" in line and not line.startswith(" "))


def _planned(output: str) -> int:
    """Cells compare_backbones.py's ``--plan`` listed: one ``cell <name>: <state>`` line each."""
    return sum(1 for line in output.splitlines() if line.startswith("cell "))


class Step(NamedTuple):
    name: str
    budget_s: int
    argv: List[str]
    env: Dict[str, str]
    benchmark: bool  # writes a pytest-benchmark JSON (then reported)
    dry_flag: str = "--collect-only"  # what --dry-run appends: lists the work without a GPU
    dry_count: Callable[[str], int] = _selected  # the work items that listing names


def comparison_steps(budget_s: int) -> List[Step]:
    """The comparison's full version, one step per objective (``--comparison``)."""
    py = sys.executable
    return [Step(f"comparison-{objective}", budget_s,
                 [py, "experiments/compare_backbones.py", "--device", "cuda", "--threads", "0", "--models", COMPARISON_MODELS,
                  "--objective", objective, "--out", f"results/compare-gpu-{objective}",
                  "--results", f"docs/results/compare-gpu-{objective}"], {"TRITON_INTERPRET": "0"}, False, "--plan", _planned)
            for objective in ("eps", "flow")]


def steps(out: str) -> List[Step]:
    py = sys.executable
    gpu_env = {"TRITON_INTERPRET": "0", "PYTHONPATH": BENCH}

    def bench(name, budget, path, k, *extra):
        argv = [py, "-m", "pytest", path, "--benchmark-only", "-q", "-k", k, "-p", "no:cacheprovider",
                "--benchmark-json", os.path.join(out, f"{name}.json"), *extra]
        return Step(name, budget, argv, {"TRITON_INTERPRET": "0"}, True)

    return [
        Step("kernel-tests", 120, [py, "-m", "pytest", "tests/test_window_attention_kernel.py", "tests/test_adaln_kernel.py",
                                   "-q", "-x", "-p", "cuda_default_device", "-p", "no:cacheprovider"], gpu_env, False),
        bench("window-attention", 170, "benchmarks/test_bench_window_attention.py", XSWIN_CASES),
        bench("adaln", 70, "benchmarks/test_bench_adaln.py", "xswin-s2-s1"),
        bench("models", 100, "benchmarks/test_bench_models.py", "train and (XSwin or DiT) and not UViT and not USwin",
              "--bench-model-sizes", "S", "--bench-latents", "32,64"),
    ]


def run_step(step: Step, dry_run: bool) -> dict:
    """Run (or, dry, collect) one step within its budget: its record for session.json."""
    argv = list(step.argv)
    if dry_run:
        argv = [a for a in argv if a != "--benchmark-only"] + [step.dry_flag]
    env = dict(os.environ, **step.env)
    # a dry run only imports and collects: a slow CPU's imports must not be held to a GPU budget
    budget = max(step.budget_s, DRY_RUN_TIMEOUT_S) if dry_run else step.budget_s
    start = time.time()
    try:
        proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=budget)
        rc, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, output = None, f"{exc.stdout or ''}{exc.stderr or ''}\nkilled after its budget of {budget} s"
    seconds = round(time.time() - start, 1)
    record = dict(name=step.name, command=" ".join(argv), budget_s=step.budget_s, seconds=seconds, returncode=rc,
                  output_tail=output[-4000:] if isinstance(output, str) else "")
    if dry_run:
        selected = step.dry_count(output)
        record.update(status="collected" if rc == 0 and selected else "collection failed", selected=selected)
    else:
        record["status"] = "timed out" if rc is None else ("passed" if rc == 0 else f"failed (exit {rc})")
    return record


def report(record: dict, out: str, dry_run: bool) -> None:
    """``report.py`` on the step's benchmark JSON, into out/<step>/."""
    path = os.path.join(out, f"{record['name']}.json")
    if dry_run or not os.path.exists(path):
        record["report"] = None
        return
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "report.py"), path, "--out", os.path.join(out, record["name"])],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    record["report"] = os.path.join(record["name"], "report.md") if proc.returncode == 0 else f"failed: {proc.stderr[-500:]}"


def result_dir(dry_run: bool) -> str:
    """benchmarks/results/<gpu>-<date>-<commit> (a temporary folder for a dry run)."""
    if dry_run:
        return tempfile.mkdtemp(prefix="gpu-session-dry-")
    import torch

    gpu = re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name()).strip("-")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    date = datetime.date.today().isoformat()
    return os.path.join(BENCH, "results", f"{gpu}-{date}-{commit or 'nogit'}")


def shapes() -> List[str]:
    """The benchmark cases the session runs, as listed by the suite itself."""
    sys.path.insert(0, BENCH)
    import test_bench_adaln
    import test_bench_window_attention

    cases = [f"window attention {n}: {c}" for n, c in test_bench_window_attention.CASES.items()
             if n.startswith("xswin") or n == "paper-s1"]
    return cases + [f"adaLN {n}: {s}" for n, s in test_bench_adaln.SHAPES.items() if n.startswith("xswin")]


def write(out: str, session: dict) -> None:
    with open(os.path.join(out, "session.json"), "w") as f:
        json.dump(session, f, indent=1)
    lines = [f"# GPU session {session['started']}", "", f"`{session['command']}` on {session['device']}"
             f" ({'dry run' if session['dry_run'] else 'measured'}), {session['seconds']} s of {SESSION_BUDGET_S} s.", "",
             "| step | status | seconds | budget | report |", "|---|---|---:|---:|---|"]
    for s in session["steps"]:
        rep = f"[{s['report']}]({s['report']})" if s.get("report") and not s["report"].startswith("failed") else (s.get("report") or "-")
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']} | {s['budget_s']} | {rep} |")
    lines += ["", "Card:" if not session["dry_run"] else "Cards (emulated, nothing measured):", ""]
    lines += device_record.markdown(session["devices"])
    lines += ["", "Shapes:", ""] + [f"- {s}" for s in session["shapes"]]
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def steps_for(args: argparse.Namespace) -> Callable[[str], List[Step]]:
    """The session's steps for a result folder: the default ones, and the comparison if asked."""
    extra = comparison_steps(args.comparison_budget) if args.comparison else []
    return lambda out: steps(out) + extra


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="no GPU: import, list, collect and write to a temp dir")
    p.add_argument("--out", default=None, help="result folder (default: benchmarks/results/<gpu>-<date>-<commit>)")
    p.add_argument("--comparison", action="store_true",
                   help="also the backbone comparison's full version (budgeted apart, not in the 8 minutes)")
    p.add_argument("--comparison-budget", type=int, default=COMPARISON_BUDGET_S,
                   help=f"seconds for each comparison step (default {COMPARISON_BUDGET_S})")
    args = p.parse_args(argv)
    if args.comparison_budget < 1:
        p.error(f"--comparison-budget must be a positive number of seconds, got {args.comparison_budget}")
    planned = steps_for(args)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_session: no CUDA device; use --dry-run to walk the steps without one", file=sys.stderr)
        return 2
    start = time.time()
    out = args.out or result_dir(args.dry_run)
    os.makedirs(out, exist_ok=True)
    session = dict(started=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                   command=" ".join([os.path.basename(sys.argv[0])] + (argv if argv is not None else sys.argv[1:])),
                   device=torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU",
                   dry_run=args.dry_run, shapes=shapes(), steps=[],
                   devices=device_record.emulated() if args.dry_run else [device_record.record(torch.device("cuda"))])
    if args.dry_run:
        # collection only: the steps do not compete for a GPU, run them side by side
        with ThreadPoolExecutor(len(planned(out))) as pool:
            session["steps"] = list(pool.map(lambda step: run_step(step, True), planned(out)))
    else:
        for step in planned(out):
            record = run_step(step, False)
            if step.benchmark:
                report(record, out, False)
            session["steps"].append(record)
            print(f"{step.name}: {record['status']} in {record['seconds']} s (budget {step.budget_s} s)", flush=True)
    session["seconds"] = round(time.time() - start, 1)
    write(out, session)
    for record in session["steps"] if args.dry_run else []:
        print(f"{record['name']}: {record['status']} ({record['selected']} tests or cells) in {record['seconds']} s")
    print(f"gpu_session: {out} ({session['seconds']} s)")
    for d in session["devices"]:
        print(f"card: {d['card']} ({d['capability']}, {d['sms']} SMs): copy {d['copy_GBps'] or '-'} GB/s of "
              f"{d['peak_GBps'] or 'unlisted'} GB/s peak")
    ok = {"collected"} if args.dry_run else {"passed"}
    listed = all(d["peak_GBps"] for d in session["devices"]) or not args.dry_run
    return 0 if listed and all(s["status"] in ok for s in session["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
