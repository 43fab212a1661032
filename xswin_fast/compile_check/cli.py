"""``python -m xswin_fast.compile_check``: arguments, the run (record, replay, compile, report) and
its exit code."""
import argparse
import json
import os
import sys
import time
from typing import List, Tuple

from .compiling import compile_all, default_cache_dir
from .recording import LaunchRecorder, merge_specializations, record_presets, replay, replay_all, sweep_calls
from .report import RULES, build_rows, enforced, kernel_summary, markdown, problems, rejected_table, summary, target_summary
from .targets import TARGETS

package_doc = sys.modules[__package__].__doc__

# batch 1 to 256: the ends, an odd batch (per-sample counts not divisible by 16), the benchmark's
# 64 and a power of two between (--batches for any other set)
DEFAULT_BATCHES = (1, 3, 16, 64, 256)


def _ints(text: str) -> List[int]:
    return [int(x) for x in text.split(",") if x]


def _windows(text: str) -> List[Tuple[int, int]]:
    out = []
    for w in text.split(","):
        h, _, v = w.partition("x")
        out.append((int(h), int(v or h)))
    return out


def parse_args(argv=None) -> argparse.Namespace:
    from ..models.registry import PRESETS

    p = argparse.ArgumentParser(description=package_doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="*", default=list(PRESETS), help="preset names (default: all)")
    p.add_argument("--factors", default="1,2,4", help="latent sizes as multiples of each preset's native one")
    p.add_argument("--precisions", default="fp32,bf16,fp16", help="fp32, and bf16 / fp16 under autocast")
    p.add_argument("--batches", default=",".join(map(str, DEFAULT_BATCHES)), help="batches the calls are replayed at")
    p.add_argument("--targets", default=",".join(map(str, TARGETS)), help="compute capabilities (10 * major + minor) "
                   f"of {', '.join(f'{a} ({t.name})' for a, t in TARGETS.items())}")
    p.add_argument("--sweep-windows", default="1,2,2x4,3x5,4,7,8,12,16", help="window-attention sweep: windows "
                   "(w or hxw); empty for none")
    p.add_argument("--sweep-head-dims", default="16,48,64,128", help="window-attention sweep: head dims")
    p.add_argument("--sweep-batch", type=int, default=64, help="batch of the sweep's calls")
    p.add_argument("--quick", action="store_true", help="XSwin-S/2, XSwin-B/2 and DiT-S/2 at their native size, "
                   "fp32 and bf16, batch 64, no sweep")
    p.add_argument("--kernels", default="", help="compile only the configurations of these kernels (comma-separated "
                   "names, e.g. window_attention_bwd_kernel); empty for all")
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
    p.add_argument("--rules", default=",".join(RULES), help=f"the rules --check enforces, of {', '.join(RULES)}, each on "
                   "every target or as RULE@TARGET (e.g. half-spills@sm_90a) on one; findings of the others are "
                   "listed as not enforced")
    args = p.parse_args(argv)
    args.rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    names = {t.name for t in TARGETS.values()}
    unknown = [r for r in args.rules if r.partition("@")[0] not in RULES or (r.partition("@")[2] or "sm_90a") not in names]
    if unknown:
        p.error(f"--rules: unknown {unknown}; available: {', '.join(RULES)}, each optionally @{'/'.join(sorted(names))}")
    if args.quick:
        args.presets, args.factors, args.precisions = ["XSwin-S/2", "XSwin-B/2", "DiT-S/2"], "1", "fp32,bf16"
        args.batches, args.sweep_windows = "64", ""
    unknown = [n for n in args.presets if n not in PRESETS]
    if unknown:
        p.error(f"--presets: unknown {unknown}; available: {', '.join(PRESETS)}")
    unknown = [a for a in _ints(args.targets) if a not in TARGETS]
    if unknown or not _ints(args.targets):
        p.error(f"--targets: unknown {unknown}; available: {', '.join(map(str, TARGETS))}")
    args.targets = [TARGETS[a] for a in _ints(args.targets)]
    return args


def run_check(args: argparse.Namespace, progress=print) -> Tuple[List[dict], List[str], str, list]:
    """Record, replay, compile: (rows, problems, summary line, calls rejected up front)."""
    import triton

    from .. import kernels

    if kernels.INTERPRET:
        raise RuntimeError("xswin_fast.kernels was imported under TRITON_INTERPRET=1; the check needs GPU constants")
    start = time.time()
    factors, precisions = _ints(args.factors), args.precisions.split(",")
    progress(f"recording {len(args.presets)} presets x latent {factors}x x {precisions} ...")
    calls, seen = record_presets(args.presets, factors, precisions, args.jobs, progress)
    again = LaunchRecorder()
    indexed = [(i, call, labels) for i, (call, labels) in enumerate(calls.items())]
    replay(indexed, [None], TARGETS[90], again, [])
    found = [] if set(again.configs) == set(seen) else [("fit", TARGETS[90].name,
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
    if args.kernels:
        kept, launched = set(args.kernels.split(",")), {spec["kernel"] for spec in configs.values()}
        if kept - launched:
            raise SystemExit(f"--kernels: {', '.join(sorted(kept - launched))} launched by no call of this scope; "
                             f"launched: {', '.join(sorted(launched))}")
        configs = {key: spec for key, spec in configs.items() if spec["kernel"] in kept}
        sources = {key: sources[key] for key in configs}
    progress(f"{len(configs)} kernel configurations; recorded and replayed in {time.time() - start:.0f} s")
    if not consulted:
        progress("note: no launch consulted the emulated GPU (torch.cuda.get_device_properties): launch geometries "
                 "that depend on the SM count are the kernels' CPU-tensor choices")
    if args.list:
        rows = build_rows(configs, {}, sources, indexed + swept)
        return rows, found, f"compile-check: {len(configs)} kernel configurations listed, none compiled (--list)", rejected
    results = compile_all(configs, args.jobs, args.timeout, None if args.no_cache else args.cache_dir, progress)
    rows = build_rows(configs, results, sources, indexed + swept)
    found += problems(rows, errors)
    line = summary(rows, rejected, found) + f"; {time.time() - start:.0f} s (triton {triton.__version__})"
    return rows, found, line, rejected


def main(argv=None) -> int:
    if os.environ.get("TRITON_INTERPRET", "0") != "0":
        # the kernels read TRITON_INTERPRET when imported: start over without it
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        os.execve(sys.executable, [sys.executable, "-m", "xswin_fast.compile_check", *(argv or sys.argv[1:])], env)
    args = parse_args(argv)
    rows, findings, line, rejected = run_check(args)
    print(kernel_summary(rows) + "\n\n" + target_summary(rows, rejected))
    found = [f"{finding} [{rule}]" for rule, target, finding in findings if enforced(rule, target, args.rules)]
    waived = [f"{finding} [{rule}]" for rule, target, finding in findings if not enforced(rule, target, args.rules)]
    if found:
        print(f"\n{len(found)} problems:\n" + "\n".join(f"- {p}" for p in found))
    if waived:
        print(f"\n{len(waived)} findings of rules not enforced in this run (enforced: {', '.join(args.rules)}):\n"
              + "\n".join(f"- {p}" for p in waived))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        header = f"# Offline GPU compile check\n\n`python -m xswin_fast.compile_check`\n\n{line}"
        tables = (f"{header}\n\n## Per target\n\n{target_summary(rows, rejected)}\n\n## Calls rejected up front "
                  f"(run on the reference with backend=None)\n\n{rejected_table(rejected)}\n\n## Per kernel\n\n"
                  f"{kernel_summary(rows)}\n\n## Every configuration")
        with open(os.path.join(args.out, "compile_check.md"), "w") as f:
            f.write(markdown(rows, tables) + "\n")
        with open(os.path.join(args.out, "compile_check.json"), "w") as f:
            json.dump(dict(summary=line, targets=[t.name for t in args.targets], rules=list(args.rules), problems=found,
                           not_enforced=waived, rejected=rejected, rows=rows), f,
                      indent=1, default=str)
    print(line)
    return 1 if args.check and found else 0


