"""``evaluate.py``: FID, Inception Score, KID and precision/recall through torch-fidelity, offline.

    python evaluate.py --ckpt results/000-XSwin-digits                 # digits: digits-cnn features
    python evaluate.py --ckpt results/001-XSwin-paper --num-samples 10000 --cfg-scale 1.5 \\
        --inception-weights ~/weights/weights-inception-2015-12-05-6726825d.pth
    python evaluate.py --samples my_samples/images --ref held_out_images/ --feature-extractor inception \\
        --inception-weights weights-inception-2015-12-05-6726825d.pth

With ``--ckpt`` the held-out split recorded by train.py (``split.json``, ``--eval-fraction``; the
official test set of a Fashion-MNIST run) is the reference: it is exported once to
``RUN_DIR/eval/reference/``; generated images follow its label distribution, or for a
text-to-image run its captions (one prompt per image, drawn from the held-out images' captions,
listed in ``--out``/prompts.json), and are written to ``--out``/images. Results go to
``--out``/metrics.json.
"""
import argparse
import importlib.util
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
from torch.utils.data import Dataset

from ..objectives.eps import PRECISIONS
from ..evaluation.digits_extractor import load_digits_cnn
from ..evaluation.fashion_extractor import load_fashion_cnn
from ..evaluation.metrics import ImageListDataset, TensorImageDataset, check_weights_file, compute_metrics, inception_weights
from ..evaluation.reference import export_reference, reference_captions, reference_labels
from ..images import save_grid, save_pngs
from ..runs.config import BACKEND_CHOICES, ConfigError, op_backend, parse_threads
from ..runs.distributed import resolve_device
from ..runs.run_dir import load_run
from ..objectives.guidance import encode_prompts
from ..objectives.sampling import DEFAULT_CFG_SCALE
from .process import apply_threads, log_to_stdout, progress_mode
from .sample import add_sampler_flags, check_backend, check_generation, generate_images, generation_tag
from .user_errors import ArgumentParser, exit_on_user_error, finite_float, non_negative_int, output_folder, positive_int

logger = logging.getLogger("xswin_fast.cli.evaluate")
METRICS = ("fid", "isc", "kid", "prc")
GENERATION = "generation (with --ckpt)"
FOLDER_FLAGS = ("device", "threads")  # the generation group's flags that --samples applies too (the metrics')


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="evaluate.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("what to evaluate")
    src.add_argument("--ckpt", help="train.py checkpoint (file, run dir = newest, or a model folder from export_run): generate samples from it")
    src.add_argument("--samples", help="instead of --ckpt: a folder of generated images")
    src.add_argument("--ref", help="reference images folder (default: the run's held-out split)")
    gen = p.add_argument_group(GENERATION)
    gen.add_argument("--num-samples", type=positive_int, default=None, help="default: as many as reference images")
    add_sampler_flags(gen)
    gen.add_argument("--cfg-scale", type=finite_float, default=DEFAULT_CFG_SCALE,
                     help=f"guidance scale (1 = off; default {DEFAULT_CFG_SCALE}, as sample.py and train.py's grids)")
    gen.add_argument("--negative-prompt", default=None,
                     help="text-to-image runs: guidance pushes away from this prompt instead of the null caption")
    gen.add_argument("--seed", type=non_negative_int, default=0)
    gen.add_argument("--batch-size", type=positive_int, default=256)
    gen.add_argument("--no-ema", action="store_true", help="evaluate the raw weights instead of the EMA")
    gen.add_argument("--device", default=None, help="auto (default: cuda if available, else cpu), cpu, cuda, cuda:N")
    gen.add_argument("--precision", default="auto", choices=PRECISIONS)
    gen.add_argument("--backend", default="auto", choices=BACKEND_CHOICES, help="op backend of the model")
    gen.add_argument("--threads", type=parse_threads, default="auto",
                     help="CPU threads: N, 0 (torch's default) or auto (one when the load average shows other work)")
    met = p.add_argument_group("metrics")
    met.add_argument("--feature-extractor", default="auto", choices=["auto", "digits", "fashion", "inception"],
                     help="auto: digits-cnn for digits runs, fashion-cnn for Fashion-MNIST runs, inception otherwise")
    met.add_argument("--inception-weights", help="local torch-fidelity Inception file (default: the torch hub cache)")
    met.add_argument("--digits-extractor-weights", help="digits-cnn weights (default cache path; trained if missing)")
    met.add_argument("--fashion-extractor-weights",
                     help="fashion-cnn weights (default cache path; trained on the installed Fashion-MNIST if missing)")
    met.add_argument("--metrics", default="fid,isc,kid,prc", help="comma-separated subset of fid,isc,kid,prc")
    met.add_argument("--kid-subset-size", type=positive_int, default=1000)
    met.add_argument("--isc-splits", type=positive_int, default=10)
    met.add_argument("--prc-neighborhood", type=positive_int, default=3)
    p.add_argument("--out", help="output folder (default RUN_DIR/eval/<step>-<sampler><steps>-cfg<scale>-seed<seed>)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="tqdm bars (default: when stderr is a terminal); otherwise progress lines on stdout")
    return p


@dataclass
class _Inputs:
    """What to compare: generated against reference images, and where the result goes."""

    generated: Dataset
    reference: Dataset
    reference_dir: str
    out: Path
    kind: Optional[str]  # the run's data kind ("digits", "folder", "latents"); None for two folders
    info: Dict[str, Any]


def _inputs_from_checkpoint(args: argparse.Namespace, prepare_metrics) -> _Inputs:
    """Generate images from ``--ckpt`` with the reference's label distribution (or, for a
    text-to-image run, from its captions), and save them. ``prepare_metrics(kind)`` runs after the
    run is loaded and before any sampling."""
    run = load_run(args.ckpt, args.device, use_ema=not args.no_ema, backend=op_backend(args.backend))
    check_backend(args, run)
    check_generation(args, run)
    if args.negative_prompt is not None and run.text_encoder is None:
        raise ConfigError("--negative-prompt needs a text-to-image run (trained with --captions); this run is "
                          "class-conditional")
    if not args.ref and not run.data.get("num_eval", 1):
        raise ConfigError(f"the run {run.run_dir} was trained with --eval-fraction 0: it holds out no images to compare "
                          "against; pass --ref FOLDER (reference images)")
    ref_dir = Path(args.ref) if args.ref else export_reference(run.run_dir)
    ref = ImageListDataset.from_folder(ref_dir)
    n = args.num_samples or len(ref)
    if n < 2:
        raise ConfigError(f"--num-samples must be at least 2 for the metrics, got {n}")
    prepare_metrics(run.data["kind"])
    rng = np.random.default_rng(args.seed)
    tag = f"{run.step:07d}-{generation_tag(args)}"
    out = Path(args.out) if args.out else run.run_dir / "eval" / tag
    if run.text_encoder is not None:
        prompts = _prompts_from_captions(ref_dir, n, rng)
        images = generate_images(args, run, encode_prompts(run.text_encoder, prompts, args.negative_prompt, run.device))
        save_pngs(images, out / "images", names=[f"{i:06d}.png" for i in range(n)])
        (out / "prompts.json").write_text(json.dumps({"prompts": prompts, "negative_prompt": args.negative_prompt}))
    else:
        ref_labels = reference_labels(ref_dir) or list(range(run.data["num_classes"]))
        labels = [ref_labels[i] for i in rng.permutation(np.resize(np.arange(len(ref_labels)), n))]
        images = generate_images(args, run, labels)
        save_pngs(images, out / "images", names=[f"{i:06d}_c{lab}.png" for i, lab in enumerate(labels)])
    save_grid(images[:100], out / "grid.png")
    info = {"checkpoint": str(run.checkpoint), "step": run.step, "objective": run.objective.name,
            "sampler": args.sampler, "steps": args.steps, "atol": args.atol, "rtol": args.rtol, "cfg_scale": args.cfg_scale,
            "cfg_interval": args.cfg_interval and [args.cfg_interval.lo, args.cfg_interval.hi],
            "cfg_interval_unit": args.cfg_interval and args.cfg_interval.unit, "guided_channels": args.guided_channels,
            "negative_prompt": args.negative_prompt, "seed": args.seed, "ema": not args.no_ema}
    return _Inputs(TensorImageDataset(images), ref, args.ref or str(ref_dir), out, run.data["kind"], info)


def _prompts_from_captions(ref_dir: Path, n: int, rng: np.random.Generator) -> List[str]:
    """``n`` prompts for a text-to-image run: the reference images, each about equally often, in a
    seeded order, each giving one of its captions (the COCO-FID convention)."""
    captions = reference_captions(ref_dir)
    if not captions:
        raise ConfigError(f"this run is text-to-image and the reference {ref_dir} has no captions.json to draw prompts "
                          "from: leave out --ref (the run's held-out split carries its captions)")
    names = sorted(captions)
    picks = rng.permutation(np.resize(np.arange(len(names)), n))
    return [captions[names[i]][rng.integers(len(captions[names[i]]))] for i in picks]


def _generation_flags_given(args: argparse.Namespace) -> List[str]:
    """The flags of the generation group, other than ``FOLDER_FLAGS``, given a non-default value."""
    group = next(g for g in build_parser()._action_groups if g.title == GENERATION)
    return [a.option_strings[0] for a in group._group_actions
            if a.dest not in FOLDER_FLAGS and getattr(args, a.dest) != a.default]


def _inputs_from_folders(args: argparse.Namespace, prepare_metrics) -> _Inputs:
    given = _generation_flags_given(args)
    if given:
        raise ConfigError(f"with --samples (images already made) the generation flags {', '.join(given)} would be "
                          "ignored: leave them out, or generate with --ckpt")
    if not args.ref:
        raise ConfigError("--samples needs --ref (a folder of reference images)")
    out = Path(args.out) if args.out else Path(args.samples).parent / "eval"
    inputs = _Inputs(
        ImageListDataset.from_folder(args.samples), ImageListDataset.from_folder(args.ref), args.ref, out, None,
        {"samples": str(args.samples)},
    )
    prepare_metrics(None)
    return inputs


def _metric_names(spec: str) -> List[str]:
    names = [m.strip() for m in spec.split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise ConfigError(f"--metrics must be a comma-separated subset of {','.join(METRICS)}, got {spec!r}")
    return names


class _FeatureExtractor:
    """The feature extractor and its weights, resolved (and the digits CNN trained, if it has
    never been) before any sampling: a missing file must not cost the user the whole sampling."""

    def __init__(self, args: argparse.Namespace):
        self.choice, self.args = args.feature_extractor, args
        self.name: Optional[str] = None
        self.weights: Optional[str] = None

    def __call__(self, kind: Optional[str]) -> None:
        args = self.args
        auto = {"digits": "digits", "fashion-mnist": "fashion"}.get(kind, "inception")
        self.name = self.choice if self.choice != "auto" else auto
        given = {"digits": args.digits_extractor_weights, "fashion": args.fashion_extractor_weights,
                 "inception": args.inception_weights}
        for name, value in given.items():
            if value is not None and name != self.name:
                raise ConfigError(f"--{name}{'-extractor' if name != 'inception' else ''}-weights is for the {name} "
                                  f"feature extractor; this evaluation uses {self.name} (--feature-extractor)")
        if self.name == "digits":
            load_digits_cnn(args.digits_extractor_weights)  # trains and caches it on first use (logged)
            self.weights = args.digits_extractor_weights
            return
        if self.name == "fashion":
            load_fashion_cnn(args.fashion_extractor_weights)  # trained on the installed Fashion-MNIST on first use
            self.weights = args.fashion_extractor_weights
            return
        path = inception_weights(args.inception_weights)
        try:
            self.weights = str(check_weights_file(path))
        except RuntimeError as exc:
            raise ConfigError(f"--inception-weights: {exc}") from exc


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    with exit_on_user_error("evaluate.py"):
        return _evaluate(args)


def _evaluate(args: argparse.Namespace) -> int:
    if bool(args.ckpt) == bool(args.samples):
        raise ConfigError("pass exactly one of --ckpt (generate) or --samples (a folder of images)")
    metrics = _metric_names(args.metrics)
    if importlib.util.find_spec("torch_fidelity") is None:
        raise ConfigError('evaluate.py needs torch-fidelity: pip install -e ".[eval]"')
    output_folder(args.out)
    args.device = str(resolve_device(args.device))
    apply_threads(args.threads)
    log_to_stdout()
    features = _FeatureExtractor(args)
    inputs = (_inputs_from_checkpoint if args.ckpt else _inputs_from_folders)(args, features)
    start = time.perf_counter()
    logger.info(f"computing {','.join(metrics)} with {features.name} features on {len(inputs.generated)} generated "
                f"and {len(inputs.reference)} reference images")
    result = compute_metrics(
        inputs.generated, inputs.reference, feature_extractor=features.name, weights_path=features.weights,
        metrics=metrics, kid_subset_size=args.kid_subset_size, isc_splits=args.isc_splits,
        prc_neighborhood=args.prc_neighborhood, device=args.device, verbose=progress_mode(args.progress) == "bar",
    )
    logger.info(f"metrics computed in {time.perf_counter() - start:.1f} s")
    result.update(inputs.info)
    result["reference"] = inputs.reference_dir
    out = inputs.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    shown = ", ".join(f"{k} {result[k]:.4g}" for k in ("fid", "isc_mean", "kid_mean", "precision", "recall") if k in result)
    print(f"{shown} ({result['num_generated']} generated vs {result['num_reference']} reference, "
          f"{result['feature_extractor']} features) -> {out / 'metrics.json'}")
    return 0
