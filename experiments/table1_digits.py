"""Table 1 of the X-Swin report, re-run on the bundled 8x8 digits: XSwin, USwin, UViT and DiT
trained with one recipe at matched parameter counts, several seeds each, scored with the offline
digits metrics at CFG 1.0 and at the best CFG of a small sweep, reported as mean ± std.

    python experiments/table1_digits.py                     # 4 models x 3 seeds (docs/table1.md)
    python experiments/table1_digits.py --seeds 5           # two more seeds; finished cells are kept
    python experiments/table1_digits.py --models DiT-S/2 --model-kwargs 'DiT-S/2={"hidden_size": 64, "depth": 9, "num_heads": 2}'
    python experiments/table1_digits.py --report-only       # table.md, table.json, table1.png again

Each (model, seed) cell is a train.py run folder, OUT/<model>-seed<k>/: a finished cell (its
cell.json written) is never retrained or re-scored, and a killed one resumes from its newest
checkpoint. The table covers every finished cell in OUT.
"""
import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from xswin_fast.cli.user_errors import ArgumentParser, exit_on_user_error, finite_float, positive_int
from xswin_fast.data import DigitsDataset
from xswin_fast.evaluation.digits_extractor import load_digits_cnn
from xswin_fast.evaluation.metrics import ImageListDataset, TensorImageDataset
from xswin_fast.evaluation.reference import export_reference, reference_labels
from xswin_fast.images import save_grid
from xswin_fast.objectives import FLOW_SAMPLERS, OBJECTIVES, SAMPLERS
from xswin_fast.runs.config import BACKEND_CHOICES, ConfigError, parse_threads
from xswin_fast.runs.distributed import resolve_device
from xswin_fast.runs.launch import resolve_threads

# the sibling files: a script's own folder is on sys.path
import experiment_common as common
from experiment_common import (Scorer, check_recipe, cfg_list, draw_labels, git_commit, machine_description, model_list,
                               train_to)
from table1_report import write_report

PROG = "table1_digits.py"
DEFAULT_MODELS = ("XSwin-digits", "USwin-digits", "UViT-digits", "DiT-digits")
REFERENCE_MODEL = "XSwin-digits"  # the parameter count every row is matched to
MATCH_TOLERANCE = 0.10
# the digits' shape, which train.py passes to every model it builds
DIGITS_SHAPE = dict(input_size=8, in_channels=1, num_classes=10)
# report samples use evaluate.py's default seed (so evaluate.py reproduces them); the CFG sweep
# draws other noise, and compares against the training split, never against the held-out digits
REPORT_SEED, SELECTION_SEED = 0, 1


def _model_kwargs(value: str) -> Tuple[str, Dict[str, Any]]:
    name, sep, spec = value.partition("=")
    try:
        kwargs = json.loads(spec) if sep else None
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{value!r}: not valid JSON after NAME= ({exc})") from None
    if not isinstance(kwargs, dict):
        raise argparse.ArgumentTypeError(f"expected NAME=JSON object, e.g. 'DiT-S/2={{\"depth\": 9}}', got {value!r}")
    return name.strip(), kwargs


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=model_list, default=list(DEFAULT_MODELS),
                   help=f"comma-separated registry names; default {','.join(DEFAULT_MODELS)}")
    p.add_argument("--model-kwargs", type=_model_kwargs, action="append", default=[], metavar="NAME=JSON",
                   help="constructor overrides of one model (repeatable): a digits-scale size for a non-digits preset")
    p.add_argument("--seeds", type=positive_int, default=3, help="seeds 0..N-1 per model (default 3)")
    p.add_argument("--out", default="results/table1-digits", help="the experiment folder (default results/table1-digits)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--threads", type=parse_threads, default="auto", help="CPU threads: N, 0 or auto (as train.py)")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto", help="op backend of the models (as train.py)")
    p.add_argument("--report-only", action="store_true", help="only rebuild the table from the finished cells")
    p.add_argument("--digits-extractor-weights", help="digits-cnn weights (default: the cache; trained if missing)")
    p.add_argument("--ckpt-every", type=positive_int, default=100, help="checkpoint every N steps (default 100)")
    r = p.add_argument_group("the recipe (one for every model; recorded in OUT/recipe.json)")
    r.add_argument("--steps", type=positive_int, default=400, help="optimizer steps (default 400)")
    r.add_argument("--batch-size", type=positive_int, default=64, help="default 64")
    r.add_argument("--lr", type=finite_float, default=2e-3, help="AdamW learning rate (default 2e-3)")
    r.add_argument("--warmup", type=int, default=50, help="linear warm-up steps (default 50)")
    r.add_argument("--lr-schedule", choices=("cosine", "constant"), default="cosine",
                   help="after warm-up: cosine decay to 0 at --steps (default) or constant")
    r.add_argument("--ema-decay", type=finite_float, default=0.9999, help="EMA decay, with warm-up (default 0.9999)")
    r.add_argument("--objective", choices=OBJECTIVES, default="eps", help="default eps (the paper's)")
    r.add_argument("--sampler", default=None, help="default: the objective's (ddpm for eps, euler for flow)")
    r.add_argument("--sample-steps", type=positive_int, default=25, help="sampler steps (default 25)")
    r.add_argument("--num-samples", type=positive_int, default=None,
                   help="report samples, scored against the held-out digits (default: as many as those, 359)")
    r.add_argument("--selection-samples", type=positive_int, default=150,
                   help="samples per CFG of the sweep, scored by FID against the training split (default 150)")
    r.add_argument("--cfg-sweep", type=cfg_list, default=[1.0, 2.0, 4.0], help="guidance scales (default 1,2,4)")
    return p


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    overrides = dict(args.model_kwargs)
    stray = sorted(set(overrides) - set(args.models))
    if stray:
        p.error(f"--model-kwargs names {', '.join(stray)}, which --models does not list")
    if len(overrides) != len(args.model_kwargs):
        p.error("--model-kwargs names a model twice")
    samplers = FLOW_SAMPLERS if args.objective == "flow" else SAMPLERS
    if args.sampler is not None and args.sampler not in samplers:
        p.error(f"--sampler {args.sampler} does not fit --objective {args.objective}: use one of {', '.join(samplers)}")
    if args.lr <= 0 or not 0 <= args.ema_decay <= 1:
        p.error(f"--lr must be > 0 and --ema-decay in [0, 1], got {args.lr:g} and {args.ema_decay:g}")
    if args.warmup < 0 or args.warmup >= args.steps:
        p.error(f"--warmup must be in [0, --steps), got {args.warmup}")
    if args.num_samples is not None and args.num_samples < 2 or args.selection_samples < 2:
        p.error("--num-samples and --selection-samples must be at least 2 (the metrics compare distributions)")
    args.model_kwargs = overrides
    return args


def recipe_of(args: argparse.Namespace) -> Dict[str, Any]:
    """What makes cells comparable: every setting that changes a cell's numbers."""
    keys = ("steps", "batch_size", "lr", "warmup", "lr_schedule", "ema_decay", "objective", "sampler", "sample_steps",
            "num_samples", "selection_samples", "cfg_sweep")
    recipe = {k: getattr(args, k) for k in keys}
    recipe.update(ema_warmup=True, max_grad_norm=1.0, selection_metric="fid")
    return recipe


def count_parameters(name: str, overrides: Dict[str, Any]) -> int:
    return common.count_parameters(name, {**DIGITS_SHAPE, **overrides})


def warn_unmatched(models: List[str], overrides: Dict[str, Dict[str, Any]]) -> None:
    """A warning for each model whose parameters are not within 10% of XSwin-digits'."""
    reference = count_parameters(REFERENCE_MODEL, {})
    for name in models:
        n = count_parameters(name, overrides.get(name, {}))
        if abs(n / reference - 1) > MATCH_TOLERANCE:
            print(f"warning: {name} has {n / 1e6:.3f}M parameters, {n / reference - 1:+.1%} against {REFERENCE_MODEL}'s "
                  f"{reference / 1e6:.3f}M: not matched within 10% (give it a digits-scale --model-kwargs)", file=sys.stderr)


def cell_dir(out: Path, model: str, seed: int) -> Path:
    return out / f"{model.replace('/', '-')}-seed{seed}"


def train_cell(run: Path, model: str, seed: int, args: argparse.Namespace, threads: int) -> None:
    """Train the cell to ``--steps``, resuming its newest checkpoint; record the session's
    images/s in training_sessions.json. SystemExit if training stops early (a signal, divergence)."""
    ops = dict(ckpt_every=args.ckpt_every, keep_last=2, progress=False, backend=args.backend)
    new = dict(
        model=model, model_kwargs=args.model_kwargs.get(model, {}), global_seed=seed, global_batch_size=args.batch_size,
        lr=args.lr, lr_warmup_steps=args.warmup, lr_schedule=args.lr_schedule, ema_decay=args.ema_decay, ema_warmup=True,
        max_grad_norm=1.0, objective=args.objective, device=args.device, threads=threads, sample_every=0, sample_num=10,
        sample_steps=args.sample_steps, sample_sampler=args.sampler,
    )
    session = train_to(run, args.steps, new, ops, PROG)
    if session is None:
        return
    sessions_path = run / "training_sessions.json"
    sessions = json.loads(sessions_path.read_text()) if sessions_path.is_file() else []
    steps = session["end"] - session["start"]
    sessions.append(dict(steps=steps, images=steps * args.batch_size, seconds=session["seconds"]))
    sessions_path.write_text(json.dumps(sessions, indent=2))


def training_split(run: Path) -> Tuple[torch.Tensor, List[int]]:
    """(uint8 (N, 1, 8, 8) images, N labels) of the run's training split: the digits split.json does not hold out."""
    split = json.loads((run / "split.json").read_text())
    held = set(int(i) for i in split["eval"])
    train_ids = [i for i in range(len(DigitsDataset().all_targets)) if i not in held]
    ds = DigitsDataset(train_ids, image_size=split["image_size"])
    images = ds.uint8_images()
    return images, ds.targets


def evaluate_cell(run: Path, args: argparse.Namespace) -> Dict[str, Any]:
    """Select the CFG on the training split, then score CFG 1.0 and the selected one on the held-out digits."""
    scorer = Scorer(run, args.device, args.backend, args.sampler, args.sample_steps, "digits", args.digits_extractor_weights)
    train_images, train_labels = training_split(run)
    train_ref = TensorImageDataset(train_images)
    sweep = {}
    for cfg in args.cfg_sweep:
        images, _ = scorer.sample(draw_labels(train_labels, args.selection_samples, SELECTION_SEED), cfg, SELECTION_SEED)
        sweep[cfg] = scorer.score(images, train_ref)["fid"]
    best = min(args.cfg_sweep, key=lambda cfg: (sweep[cfg], cfg))
    ref_dir = export_reference(run)
    held_out = ImageListDataset.from_folder(ref_dir)
    labels = draw_labels(reference_labels(ref_dir), args.num_samples or len(held_out), REPORT_SEED)
    report = {}
    for cfg in sorted({1.0, best}):
        images, seconds = scorer.sample(labels, cfg, REPORT_SEED)
        save_grid(images[:100], run / "eval" / f"table1-cfg{cfg:g}.png", nrow=10)
        report[cfg] = dict(scorer.score(images, held_out), sample_seconds=seconds, num_samples=len(labels))
    return dict(sweep_fid_train={f"{c:g}": v for c, v in sweep.items()}, best_cfg=best,
                cfg1=report[1.0], best=report[best], step=scorer.run.step)


def run_cell(out: Path, model: str, seed: int, args: argparse.Namespace, threads: int) -> None:
    """Train (or resume) and score one cell, then write its cell.json; a cell with one is kept."""
    run = cell_dir(out, model, seed)
    overrides = args.model_kwargs.get(model, {})
    if (run / "config.json").is_file():
        saved = json.loads((run / "config.json").read_text())["model_kwargs"]
        saved = {k: v for k, v in saved.items() if k not in DIGITS_SHAPE}
        if saved != overrides:
            raise ConfigError(f"{run} was built with --model-kwargs {json.dumps(saved)}, not {json.dumps(overrides)}: "
                              "pass the same, or another --out")
    if (run / "cell.json").is_file():
        print(f"{run.name}: finished earlier, kept", flush=True)
        return
    started = dict(started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   load_average=os.getloadavg()[0] if hasattr(os, "getloadavg") else None)
    print(f"{run.name}: training to step {args.steps}", flush=True)
    train_cell(run, model, seed, args, threads)
    print(f"{run.name}: evaluating (CFG sweep {', '.join(f'{c:g}' for c in args.cfg_sweep)})", flush=True)
    began = time.perf_counter()
    result = evaluate_cell(run, args)
    sessions = json.loads((run / "training_sessions.json").read_text()) if (run / "training_sessions.json").is_file() else []
    train_seconds = sum(s["seconds"] for s in sessions)
    cell = dict(
        model=model, seed=seed, params=count_parameters(model, overrides),
        # over the recorded sessions only: a killed session's steps are trained again after the resume
        train_images_per_s=sum(s["images"] for s in sessions) / train_seconds if train_seconds else None,
        train_seconds=train_seconds, eval_seconds=time.perf_counter() - began, **result,
        machine=machine_description(args.device), commit=git_commit(), **started,
    )
    tmp = run / ".cell.json.tmp"
    tmp.write_text(json.dumps(cell, indent=2))
    os.replace(tmp, run / "cell.json")
    print(f"{run.name}: FID {cell['cfg1']['fid']:.3f} at CFG 1, {cell['best']['fid']:.3f} at CFG {cell['best_cfg']:g} "
          f"(training {train_seconds:.0f} s, evaluation {cell['eval_seconds']:.0f} s)", flush=True)


def run_experiment(args: argparse.Namespace) -> None:
    out = Path(args.out)
    check_recipe(out, recipe_of(args))
    warn_unmatched(args.models, args.model_kwargs)
    threads = resolve_threads(args.threads)
    if threads:
        torch.set_num_threads(threads)
    load_digits_cnn(args.digits_extractor_weights)  # trained once, before any cell needs it
    for seed in range(args.seeds):  # seed-major: an interrupted experiment still compares every model
        for model in args.models:
            run_cell(out, model, seed, args, threads)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    with exit_on_user_error(PROG):
        common.check_folders(args, "out")
        args.device = str(resolve_device(args.device))
        if not args.report_only:
            run_experiment(args)
        written = write_report(Path(args.out), order=args.models)
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
