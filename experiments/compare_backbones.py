"""Which backbone should a user train? XSwin, USwin, UViT and DiT at matched parameter counts,
trained with one recipe on the digits and on Fashion-MNIST, several seeds each, FID measured
along training against images seen, training FLOPs and wall-clock, and a guidance sweep at the
final checkpoint extended until its best scale is interior (docs/comparison.md).

    python experiments/compare_backbones.py --out results/compare-backbones            # the core: 2 x 4 x 3 cells
    python experiments/compare_backbones.py --shard 0/2 & python experiments/compare_backbones.py --shard 1/2
    python experiments/compare_backbones.py --device cuda --steps 12000         # a GPU, a longer recipe (new --results)
    python experiments/compare_backbones.py --report-only                       # tables and curves again
    python experiments/compare_backbones.py --plan                              # which cells are finished

A cell is one (dataset, model, seed). Its train.py run folder lives in --out; its summary, written
last, in --results/cells/ (committed with the results). A cell whose summary exists is finished
and never redone; an unfinished one resumes from its newest checkpoint and keeps the checkpoint
evaluations and sweep scales it already scored (OUT/<cell>/progress.json).
"""
import argparse
import datetime
import functools
import inspect
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from xswin_fast.checkpoints import list_checkpoints
from xswin_fast.cli.user_errors import ArgumentParser, exit_on_user_error, finite_float, positive_int
from xswin_fast.data import DigitsDataset, FashionMNISTDataset, stratified_split
from xswin_fast.data.fashion_mnist import FILES, find_fashion_mnist, read_idx
from xswin_fast.evaluation.digits_extractor import load_digits_cnn
from xswin_fast.evaluation.fashion_extractor import load_fashion_cnn
from xswin_fast.evaluation.metrics import TensorImageDataset
from xswin_fast.images import save_grid
from xswin_fast.models import PRESETS, create_model
from xswin_fast.objectives import FLOW_SAMPLERS, OBJECTIVES, SAMPLERS
from xswin_fast.runs.config import BACKEND_CHOICES, FASHION_MNIST, ConfigError, parse_threads
from xswin_fast.runs.distributed import resolve_device
from xswin_fast.runs.launch import resolve_threads

# the sibling files: a script's own folder is on sys.path
import experiment_common as common
from compare_report import write_report
from experiment_common import Scorer, cfg_list, check_recipe, draw_labels, git_commit, machine_description, model_list

PROG = "compare_backbones.py"
DATASETS = ("digits", FASHION_MNIST)
DEFAULT_MODELS = ("XSwin-digits", "USwin-digits", "UViT-digits", "DiT-digits")
DIGITS_SPLIT_SEED = 0  # the digits' held-out split, the same for every training seed
REPORT_SEED, SELECTION_SEED = 0, 1  # held-out samples; the sweep's samples (scored on training images)
SWEEP_REFERENCE = 10_000  # Fashion-MNIST training images that score the sweep (a fixed random subset)
MAX_SWEEP_SCALES = 10
# a model whose cells cost more than the equal-compute budget by this factor gets a matched cell too
# (a schedule decayed to 0 at the budget): below it the curve's read-off lies where the cosine has
# decayed the learning rate to under 0.7% of its peak
MATCH_ABOVE = 1 / 0.95


@dataclass
class DatasetSpec:
    """One dataset of the experiment: train.py settings, a model variant's overrides (on top of each
    family's geometry), the held-out images that every cell is scored against, and the training
    images that score the guidance sweep."""

    name: str
    train_flags: Dict[str, Any]
    model_kwargs: Dict[str, Any]
    image_size: int
    held_out: torch.Tensor  # uint8 (N, 1, S, S)
    held_out_labels: List[int]
    sweep_reference: torch.Tensor  # uint8 (M, 1, S, S), training images
    sweep_labels: List[int]
    extractor: str
    extractor_weights: Optional[str]


def _dataset_list(value: str) -> List[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names or any(n not in DATASETS for n in names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(DATASETS)}, got {value!r}")
    return names


def _shard(value: str) -> Tuple[int, int]:
    index, sep, count = value.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = -1, 0
    if not sep or n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, e.g. 0/2, got {value!r}")
    return i, n


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", type=_dataset_list, default=list(DATASETS), help=f"default {','.join(DATASETS)}")
    p.add_argument("--models", type=model_list, default=list(DEFAULT_MODELS), help=f"default {','.join(DEFAULT_MODELS)}")
    p.add_argument("--seeds", type=positive_int, default=3, help="training seeds 0..N-1 per model (default 3)")
    p.add_argument("--out", default="results/compare-backbones", help="run folders (checkpoints); default results/compare-backbones")
    p.add_argument("--results", default="docs/results/compare-backbones",
                   help="cell summaries, tables and curves (default docs/results/compare-backbones)")
    p.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/N", help="run every N-th cell from the I-th (default 0/1)")
    p.add_argument("--data-dir", default=None, help="folder of the Fashion-MNIST IDX files (default /usr/share/datasets/fashion-mnist)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--threads", type=parse_threads, default="auto", help="CPU threads: N, 0 or auto (as train.py)")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto", help="op backend of the models (as train.py)")
    p.add_argument("--ckpt-every", type=positive_int, default=100, help="checkpoint every N steps (default 100)")
    p.add_argument("--digits-extractor-weights", help="digits-cnn weights (default: the cache; trained if missing)")
    p.add_argument("--fashion-extractor-weights", help="fashion-cnn weights (default: the cache; trained if missing)")
    p.add_argument("--report-only", action="store_true", help="only rebuild the tables and curves from the summaries")
    p.add_argument("--plan", action="store_true", help="list this shard's cells (finished, started or to do) and exit")
    p.add_argument("--matched", action=argparse.BooleanOptionalAction, default=True,
                   help="after the core cells, the compute-matched cells of the costlier models (default: on)")
    r = p.add_argument_group("the recipe (one for every model and dataset; recorded in RESULTS/recipe.json)")
    r.add_argument("--steps", type=positive_int, default=3000, help="optimizer steps (default 3000)")
    r.add_argument("--eval-every", type=positive_int, default=600, help="FID every N steps (default 600)")
    r.add_argument("--batch-size", type=positive_int, default=64, help="default 64")
    r.add_argument("--lr", type=finite_float, default=1e-3, help="AdamW peak learning rate (default 1e-3)")
    r.add_argument("--lr-schedule", choices=("cosine", "constant"), default="cosine",
                   help="after warm-up: cosine decay to 0 at --steps (default) or constant")
    r.add_argument("--warmup", type=int, default=100, help="linear warm-up steps (default 100)")
    r.add_argument("--ema-decay", type=finite_float, default=0.9999, help="EMA decay, with warm-up (default 0.9999)")
    r.add_argument("--objective", choices=OBJECTIVES, default="eps",
                   help="eps (default: the paper's) or flow (SiT's linear flow matching, the second column)")
    r.add_argument("--sampler", choices=SAMPLERS + FLOW_SAMPLERS[:2], default=None,
                   help="ddim (default for eps) or ddpm; euler (default for flow) or heun")
    r.add_argument("--sample-steps", type=positive_int, default=25, help="sampler steps (default 25)")
    r.add_argument("--curve-cfg", type=finite_float, default=1.0, help="the guidance scale of the FID curves (default 1)")
    r.add_argument("--num-samples", type=positive_int, default=500,
                   help="samples per held-out FID, at most the held-out count (default 500; the digits hold out 359)")
    r.add_argument("--selection-samples", type=positive_int, default=200,
                   help="samples per scale of the final guidance sweep, scored on training images (default 200)")
    r.add_argument("--cfg-sweep", type=cfg_list, default=[1.0, 2.0, 3.0, 4.0], help="the sweep's first scales (default 1,2,3,4)")
    r.add_argument("--fashion-size", type=positive_int, default=16,
                   help="Fashion-MNIST's size in pixels: 16 (default; resampled), 28 (native) or 32 (padded)")
    r.add_argument("--fashion-patch", type=positive_int, default=2, help="patch size on Fashion-MNIST (default 2: 8x8 tokens at 16 px)")
    return p


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if args.lr <= 0 or not 0 <= args.ema_decay <= 1 or args.curve_cfg < 0:
        p.error(f"--lr must be > 0, --ema-decay in [0, 1] and --curve-cfg >= 0, got {args.lr:g}, {args.ema_decay:g}, {args.curve_cfg:g}")
    if args.warmup < 0 or args.warmup >= args.steps:
        p.error(f"--warmup must be in [0, --steps), got {args.warmup}")
    if args.steps % args.eval_every:
        p.error(f"--steps {args.steps} must be a multiple of --eval-every {args.eval_every}")
    args.sampler = args.sampler or ("ddim" if args.objective == "eps" else "euler")
    if args.sampler not in (SAMPLERS if args.objective == "eps" else FLOW_SAMPLERS):
        p.error(f"--sampler {args.sampler} does not fit --objective {args.objective}")
    if args.num_samples < 2 or args.selection_samples < 2:
        p.error("--num-samples and --selection-samples must be at least 2 (the metrics compare distributions)")
    return args


# the recipe's settings that are flags of this script (the rest of a recipe is fixed here)
RECIPE_FLAGS = ("steps", "eval_every", "batch_size", "lr", "lr_schedule", "warmup", "ema_decay", "objective", "sampler",
                "sample_steps", "curve_cfg", "num_samples", "selection_samples", "cfg_sweep", "fashion_size", "fashion_patch")


def recipe_of(args: argparse.Namespace) -> Dict[str, Any]:
    """Every setting that changes a cell's numbers: cells of one results folder share it."""
    return dict({k: getattr(args, k) for k in RECIPE_FLAGS}, ema_warmup=True,
                max_grad_norm=1.0, digits_split_seed=DIGITS_SPLIT_SEED, sweep_reference=SWEEP_REFERENCE)


def recipe_flags(recipe: Dict[str, Any]) -> List[str]:
    """The flags of this script that reproduce ``recipe`` (a results folder's recipe.json)."""
    flags = []
    for key in RECIPE_FLAGS:
        value = recipe[key]
        flags += [f"--{key.replace('_', '-')}", ",".join(f"{v:g}" for v in value) if isinstance(value, list) else str(value)]
    return flags


def _as_uint8(images: torch.Tensor) -> torch.Tensor:
    return ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def load_dataset(name: str, args: argparse.Namespace) -> DatasetSpec:
    """The held-out and sweep-reference images of dataset ``name`` and how train.py reads it."""
    if name == "digits":
        full = DigitsDataset()
        train_ids, held_ids = stratified_split(full.all_targets, 0.2, DIGITS_SPLIT_SEED)
        held, train = DigitsDataset(held_ids), DigitsDataset(train_ids)
        return DatasetSpec(name, dict(eval_fraction=0.2, split_seed=DIGITS_SPLIT_SEED), {}, 8, _as_uint8(held.images),
                           held.targets, _as_uint8(train.images), train.targets, "digits", args.digits_extractor_weights)
    root = str(find_fashion_mnist(args.data_dir))
    held = FashionMNISTDataset(root, "test", image_size=args.fashion_size)
    n_train = len(read_idx(Path(root) / FILES["train"][1]))
    subset = np.sort(np.random.default_rng(0).permutation(n_train)[:SWEEP_REFERENCE])
    train = FashionMNISTDataset(root, "train", indices=subset.tolist(), image_size=args.fashion_size)
    return DatasetSpec(name, dict(data=FASHION_MNIST, data_dir=root, image_size=held.image_size),
                       {}, held.image_size, held.uint8_images(), held.targets,
                       train.uint8_images(), train.targets, "fashion", args.fashion_extractor_weights)


def geometry(dataset: str, model: str, args: argparse.Namespace) -> Tuple[int, Dict[str, Any]]:
    """(image size, constructor overrides) of ``model``'s cells on ``dataset``: --fashion-patch goes to
    the families that patchify; the image-space ones (DiffiT) take the image at its size."""
    if dataset == "digits":
        return 8, {}
    patchifies = "patch_size" in inspect.signature(PRESETS[model][0]).parameters
    return args.fashion_size, dict(patch_size=args.fashion_patch) if patchifies else {}


@functools.lru_cache(maxsize=None)
def training_flops_per_image(model: str, image_size: int, patch_size: Optional[int] = None) -> float:
    """Forward + backward FLOPs of one training image (multiply-add = 2), counted on the meta
    device under the MATH attention backend as xswin_fast.flops counts the forward."""
    kwargs = {} if patch_size is None else dict(patch_size=patch_size)
    with torch.device("meta"):
        net = create_model(model, input_size=image_size, in_channels=1, num_classes=10, **kwargs)
        x = torch.zeros(2, 1, image_size, image_size)
        t, y = torch.zeros(2), torch.zeros(2, dtype=torch.long)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        net(x, t, y).square().mean().backward()
    return counter.get_total_flops() / 2


def flops_of(model: str, dataset: str, args: argparse.Namespace) -> float:
    size, kwargs = geometry(dataset, model, args)
    return training_flops_per_image(model, size, kwargs.get("patch_size"))


def matched_steps(dataset: str, model: str, args: argparse.Namespace) -> Optional[int]:
    """Steps of ``model``'s compute-matched cell on ``dataset``: a schedule of its own whose training
    FLOPs are the equal-compute budget (the cheapest of --models at --steps), a multiple of the
    curve's checkpoint count; None where the model costs at most MATCH_ABOVE times the cheapest."""
    ratio = min(flops_of(m, dataset, args) for m in args.models) / flops_of(model, dataset, args)
    if 1 / ratio <= MATCH_ABOVE:
        return None
    points = args.steps // args.eval_every
    return max(1, round(args.steps * ratio / points)) * points


def cell_name(dataset: str, model: str, seed: int) -> str:
    return f"{dataset}-{model.replace('/', '-')}-seed{seed}"


def checkpoint_at(run: Path, step: int) -> Path:
    """The run's checkpoint file of ``step``; ConfigError if it is gone."""
    for path in list_checkpoints(run / "checkpoints"):
        if int(path.stem) == step:
            return path
    raise ConfigError(f"{run} has no checkpoint of step {step} to evaluate: remove the folder to redo the cell")


def wall_clock(sessions: List[Dict[str, Any]], step: int) -> Tuple[float, bool]:
    """(training seconds to reach ``step``, whether estimated): the recorded sessions up to it; a
    session killed without a record is filled in at the recorded seconds per step."""
    done = [s for s in sessions if s["end"] <= step]
    seconds, steps = sum(s["seconds"] for s in done), sum(s["end"] - s["start"] for s in done)
    if steps >= step or not steps:
        return seconds, False
    return seconds * step / steps, True


class Cell:
    """One (dataset, model, seed): trains its run folder checkpoint by checkpoint, scores each,
    sweeps guidance at the last; its state is OUT/<cell>/progress.json. ``variant`` (str) names
    a model variant (``spec.model_kwargs``) in the cell's name: ``<cell>-<variant>``."""

    def __init__(self, spec: DatasetSpec, model: str, seed: int, args: argparse.Namespace, threads: int, variant: str = "",
                 steps: Optional[int] = None):
        self.spec, self.model, self.seed, self.args, self.threads = spec, model, seed, args, threads
        self.name = cell_name(spec.name, model, seed) + (f"-{variant}" if variant else "")
        self.model_kwargs = {**geometry(spec.name, model, args)[1], **spec.model_kwargs}
        # a compute-matched cell: ``steps`` (int) of its own, decayed to 0 there, the same checkpoint count
        self.steps = steps or args.steps
        self.eval_every = self.steps // (args.steps // args.eval_every)
        self.run = Path(args.out) / self.name
        self.summary_path = Path(args.results) / "cells" / f"{self.name}.json"
        path = self.run / "progress.json"
        self.progress = json.loads(path.read_text()) if path.is_file() else dict(
            points=[], sessions=[], sweep={}, best=None, eval_seconds=0.0,
            started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))

    def save(self) -> None:
        common.write_json(self.run / "progress.json", self.progress)

    def scorer(self, step: int) -> Scorer:
        a = self.args
        return Scorer(checkpoint_at(self.run, step), a.device, a.backend, a.sampler, a.sample_steps, self.spec.extractor,
                      self.spec.extractor_weights)

    def held_out_metrics(self, scorer: Scorer, cfg: float) -> Dict[str, Any]:
        spec = self.spec
        labels = draw_labels(spec.held_out_labels, min(self.args.num_samples, len(spec.held_out_labels)), REPORT_SEED)
        images, seconds = scorer.sample(labels, cfg, REPORT_SEED)
        save_grid(images[:100], self.run / "eval" / f"step{scorer.run.step}-cfg{cfg:g}.png", nrow=10)
        return dict(scorer.score(images, TensorImageDataset(spec.held_out)), sample_seconds=seconds, num_samples=len(labels))

    def train_and_score(self, flops_per_image: float) -> None:
        a, spec = self.args, self.spec
        new = dict(model=self.model, model_kwargs=self.model_kwargs, global_seed=self.seed, global_batch_size=a.batch_size,
                   lr=a.lr, lr_warmup_steps=a.warmup, lr_schedule=a.lr_schedule, lr_decay_steps=self.steps,
                   ema_decay=a.ema_decay, ema_warmup=True, max_grad_norm=1.0, objective=a.objective, device=a.device,
                   threads=self.threads, sample_every=0, sample_num=10, sample_steps=a.sample_steps, sample_sampler=a.sampler, **spec.train_flags)
        ops = dict(ckpt_every=a.ckpt_every, keep_last=2, progress=False, backend=a.backend)
        scored = {p["step"] for p in self.progress["points"]}
        for step in range(self.eval_every, self.steps + 1, self.eval_every):
            if step in scored:
                continue
            print(f"{self.name}: training to step {step}", flush=True)
            session = common.train_to(self.run, step, new, ops, PROG)
            if session:
                self.progress["sessions"].append(session)
                self.save()
            began = time.perf_counter()
            metrics = self.held_out_metrics(self.scorer(step), a.curve_cfg)
            seconds, estimated = wall_clock(self.progress["sessions"], step)
            self.progress["points"].append(dict(step=step, images=step * a.batch_size, train_flops=flops_per_image * step * a.batch_size,
                                                train_seconds=seconds, train_seconds_estimated=estimated, cfg=a.curve_cfg, **metrics))
            self.progress["eval_seconds"] += time.perf_counter() - began
            self.save()
            print(f"{self.name}: step {step}: FID {metrics['fid']:.3f} at CFG {a.curve_cfg:g}", flush=True)

    def next_scale(self) -> Optional[float]:
        """The sweep's next scale: an unscored one of --cfg-sweep, else one beyond a best at the
        edge (1.5x the top, or 0.5 below the bottom down to 0); None when the best is interior."""
        sweep = {float(k): v for k, v in self.progress["sweep"].items()}
        todo = [s for s in self.args.cfg_sweep if s not in sweep]
        if todo:
            return todo[0]
        if len(sweep) >= MAX_SWEEP_SCALES:
            return None
        best = min(sweep, key=lambda s: (sweep[s], s))
        if best == max(sweep):
            return round(best * 1.5 * 2) / 2
        if best == min(sweep) and best > 0:
            return max(best - 0.5, 0.0)
        return None

    def sweep(self) -> None:
        """Guidance sweep at the final checkpoint, extended until its best scale is interior, then
        the best scale scored on the held-out set."""
        a, spec = self.args, self.spec
        scorer = None
        began = time.perf_counter()
        while (scale := self.next_scale()) is not None:
            scorer = scorer or self.scorer(self.steps)
            labels = draw_labels(spec.sweep_labels, a.selection_samples, SELECTION_SEED)
            images, _ = scorer.sample(labels, scale, SELECTION_SEED)
            self.progress["sweep"][f"{scale:g}"] = scorer.score(images, TensorImageDataset(spec.sweep_reference))["fid"]
            self.save()
            print(f"{self.name}: sweep CFG {scale:g}: FID {self.progress['sweep'][f'{scale:g}']:.3f} (training images)", flush=True)
        if self.progress["best"] is None:
            sweep = {float(k): v for k, v in self.progress["sweep"].items()}
            best = min(sweep, key=lambda s: (sweep[s], s))
            last = self.progress["points"][-1]
            if best == a.curve_cfg:
                metrics = {k: v for k, v in last.items() if k not in ("step", "images", "train_flops", "train_seconds",
                                                                       "train_seconds_estimated")}
            else:
                metrics = dict(self.held_out_metrics(scorer or self.scorer(self.steps), best), cfg=best)
            self.progress["best"] = metrics
        self.progress["eval_seconds"] += time.perf_counter() - began
        self.save()

    def summary(self, flops_per_image: float) -> Dict[str, Any]:
        sweep = {float(k): v for k, v in self.progress["sweep"].items()}
        best = min(sweep, key=lambda s: (sweep[s], s))
        return dict(
            dataset=self.spec.name, model=self.model, seed=self.seed, model_kwargs=self.model_kwargs,
            params=common.count_parameters(self.model, dict(input_size=self.spec.image_size, in_channels=1, num_classes=10,
                                                            **self.model_kwargs)),
            train_flops_per_image=flops_per_image, points=self.progress["points"],
            sweep_fid_train={f"{s:g}": sweep[s] for s in sorted(sweep)}, best_cfg=best,
            best_interior=min(sweep) < best < max(sweep), best=self.progress["best"],
            train_seconds=wall_clock(self.progress["sessions"], self.steps)[0], sessions=self.progress["sessions"],
            matched_steps=self.steps if self.steps != self.args.steps else None,
            eval_seconds=self.progress["eval_seconds"], recipe=recipe_of(self.args),
            machine=machine_description(self.args.device), commit=git_commit(), started=self.progress["started"],
            finished=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        )

    def execute(self) -> None:
        """Train, score and sweep the cell, then write its summary; a cell with one is kept."""
        if self.summary_path.is_file():
            print(f"{self.name}: finished earlier, kept", flush=True)
            return
        flops = flops_of(self.model, self.spec.name, self.args)
        self.train_and_score(flops)
        self.sweep()
        summary = self.summary(flops)
        common.write_json(self.summary_path, summary)
        print(f"{self.name}: finished: FID {summary['points'][-1]['fid']:.3f} at CFG {self.args.curve_cfg:g}, "
              f"{summary['best']['fid']:.3f} at the best CFG {summary['best_cfg']:g}", flush=True)


def cells_of(args: argparse.Namespace) -> List[Tuple[int, str, str, Optional[int]]]:
    """(seed, dataset, model, matched steps or None) of this shard: the core cells seed-major (an
    interrupted run compares every model), then the compute-matched cells."""
    core = [(seed, d, m) for seed in range(args.seeds) for d in args.datasets for m in args.models]
    matched = [(seed, d, m, steps) for seed, d, m in core if args.matched and (steps := matched_steps(d, m, args))]
    index, count = args.shard
    return [(*c, None) for c in core][index::count] + matched[index::count]


def name_of(seed: int, dataset: str, model: str, steps: Optional[int]) -> str:
    return cell_name(dataset, model, seed) + ("-matched" if steps else "")


def print_plan(args: argparse.Namespace) -> int:
    """One line per cell of this shard, ``cell <name>: finished | started | to do``; returns the
    number of cells."""
    mine = cells_of(args)
    for cell in mine:
        name = name_of(*cell)
        done = (Path(args.results) / "cells" / f"{name}.json").is_file()
        started = (Path(args.out) / name / "progress.json").is_file()
        steps = f" ({cell[3]} steps, the equal-compute budget)" if cell[3] else ""
        print(f"cell {name}: {'finished' if done else 'started' if started else 'to do'}{steps}")
    return len(mine)


def run_experiment(args: argparse.Namespace) -> None:
    check_recipe(Path(args.results), recipe_of(args))
    threads = resolve_threads(args.threads)
    if threads:
        torch.set_num_threads(threads)
    mine = cells_of(args)
    specs = {d: load_dataset(d, args) for d in args.datasets if any(c[1] == d for c in mine)}
    ready = set()
    for seed, dataset, model, steps in mine:
        if dataset not in ready:  # each extractor loaded (trained once, if missing) before its first cell
            if dataset == FASHION_MNIST:
                load_fashion_cnn(args.fashion_extractor_weights, data_dir=args.data_dir)
            else:
                load_digits_cnn(args.digits_extractor_weights)
            ready.add(dataset)
        Cell(specs[dataset], model, seed, args, threads, "matched" if steps else "", steps).execute()


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    with exit_on_user_error(PROG):
        common.check_folders(args, "out", "results")
        if args.plan:
            if (Path(args.results) / "recipe.json").is_file():
                check_recipe(Path(args.results), recipe_of(args))
            print(f"{print_plan(args)} cells")
            return 0
        args.device = str(resolve_device(args.device))
        if not args.report_only:
            run_experiment(args)
        written = write_report(Path(args.results), order=args.models)
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
