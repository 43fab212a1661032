"""Why do XSwin's cross-attention skips trail USwin's concatenation? XSwin-digits variants of the
skip fusion (``skip_fusion``), trained and scored with the exact recipe of compare_backbones.py
on the digits, so that its XSwin-digits ("replace") and USwin-digits cells are the baselines
(docs/comparison.md, "Why XSwin's skips trail concatenation").

    python experiments/skip_ablation.py --out results/skip-ablation                 # every variant, 2 seeds
    python experiments/skip_ablation.py --variants residual --seeds 1               # one cell
    python experiments/skip_ablation.py --report-only                               # the table again

A cell is one (variant, seed), named ``digits-XSwin-digits-seed<S>-<variant>``; its summary has the
format of compare_backbones.py's cells (its ``model_kwargs`` name the variant). A finished cell
is never redone and an unfinished one resumes, as there.
"""
import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from xswin_fast.cli.user_errors import ArgumentParser, exit_on_user_error, positive_int
from xswin_fast.evaluation.digits_extractor import load_digits_cnn
from xswin_fast.runs.config import BACKEND_CHOICES, parse_threads
from xswin_fast.runs.distributed import resolve_device
from xswin_fast.runs.launch import resolve_threads

# the sibling files: a script's own folder is on sys.path
import compare_backbones
import experiment_common as common
from table1_report import format_cell, mean_std

PROG = "skip_ablation.py"
MODEL = "XSwin-digits"
VARIANTS: Dict[str, Dict[str, Any]] = {
    "residual": dict(skip_fusion="residual"),  # skip + branch, the branch zero at init: the fix
    "sum": dict(skip_fusion="sum"),  # skip + branch as initialised today: the skip's path without the zero init
}
BASELINES = (("XSwin-digits", "replace (XSwin)"), ("USwin-digits", "concatenation (USwin)"))


def _variant_list(value: str) -> List[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names or any(n not in VARIANTS for n in names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(VARIANTS)}, got {value!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", type=_variant_list, default=list(VARIANTS), help=f"default {','.join(VARIANTS)}")
    p.add_argument("--seeds", type=positive_int, default=2, help="training seeds 0..N-1 per variant (default 2)")
    p.add_argument("--out", default="results/skip-ablation", help="run folders (default results/skip-ablation)")
    p.add_argument("--results", default="docs/results/skip-ablation", help="cell summaries and the table")
    p.add_argument("--baselines", default="docs/results/compare-backbones-1000",
                   help="compare_backbones.py's results: its recipe is used, its XSwin and USwin digits cells are the baselines")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--threads", type=parse_threads, default="auto", help="CPU threads: N, 0 or auto (as train.py)")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto", help="op backend of the models (as train.py)")
    p.add_argument("--digits-extractor-weights", help="digits-cnn weights (default: the cache; trained if missing)")
    p.add_argument("--report-only", action="store_true", help="only rebuild the table from the summaries")
    return p


def recipe_args(args: argparse.Namespace) -> argparse.Namespace:
    """compare_backbones.py's arguments with the baselines' recipe (its recipe.json) and this run's
    folders and machine settings."""
    recipe = json.loads((Path(args.baselines) / "recipe.json").read_text())
    flags = ["--datasets", "digits", "--models", MODEL, "--out", args.out, "--results", args.results,
             "--device", args.device, "--backend", args.backend, "--threads", str(args.threads),
             *compare_backbones.recipe_flags(recipe)]
    if args.digits_extractor_weights:
        flags += ["--digits-extractor-weights", args.digits_extractor_weights]
    cargs = compare_backbones.parse_args(flags)
    common.check_recipe(Path(args.baselines), compare_backbones.recipe_of(cargs))  # the recipe reproduced exactly
    return cargs


def run_ablation(args: argparse.Namespace) -> None:
    cargs = recipe_args(args)
    common.check_recipe(Path(args.results), compare_backbones.recipe_of(cargs))
    threads = resolve_threads(cargs.threads)
    if threads:
        torch.set_num_threads(threads)
    digits = compare_backbones.load_dataset("digits", cargs)
    load_digits_cnn(cargs.digits_extractor_weights)
    for seed in range(args.seeds):  # seed-major: an interrupted run compares every variant
        for variant in args.variants:
            spec = dataclasses.replace(digits, model_kwargs=dict(VARIANTS[variant]))
            compare_backbones.Cell(spec, MODEL, seed, cargs, threads, variant).execute()


def _row(label: str, cells: List[Dict[str, Any]]) -> str:
    def summary(values):
        mean, std = mean_std(values)
        return dict(mean=mean, std=std)

    final = summary([c["points"][-1]["fid"] for c in cells])
    best = summary([c["best"]["fid"] for c in cells])
    cfgs = ", ".join(f"{c['best_cfg']:g}" for c in cells)
    seeds = ", ".join(str(c["seed"]) for c in cells)
    return f"| {label} | {seeds} | {format_cell(final, 2)} | {format_cell(best, 2)} | {cfgs} |"


def write_table(args: argparse.Namespace) -> Optional[Path]:
    """``RESULTS/table.md``: FID at the last step (CFG of the curves) and at the best guidance,
    mean ± std over seeds, of the baselines (their seeds that a variant has) and of every variant."""
    mine = [json.loads(p.read_text()) for p in sorted((Path(args.results) / "cells").glob("*.json"))]
    if not mine:
        return None
    seeds = sorted({c["seed"] for c in mine})
    base = [json.loads(p.read_text()) for p in sorted((Path(args.baselines) / "cells").glob("digits-*.json"))]
    lines = ["| skip | seeds | FID at the last step, CFG of the curves | FID at the best CFG | best CFG |",
             "| --- | --- | --- | --- | --- |"]
    for model, label in BASELINES:
        cells = [c for c in base if c["model"] == model and c["seed"] in seeds]
        if cells:
            lines.append(_row(label, cells))
    for variant, kwargs in VARIANTS.items():
        cells = [c for c in mine if c["model_kwargs"] == kwargs]
        if cells:
            lines.append(_row(f"{variant} (XSwin, skip_fusion={kwargs['skip_fusion']})", cells))
    path = Path(args.results) / "table.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    with exit_on_user_error(PROG):
        common.check_folders(args, "out", "results")
        args.device = str(resolve_device(args.device))
        if not args.report_only:
            run_ablation(args)
        written = write_table(args)
    print(f"wrote {written}" if written else "no finished cell yet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
