"""``evaluate.py``: FID, Inception Score, KID and precision/recall through torch-fidelity, offline.

    python evaluate.py --ckpt results/000-XSwin-digits                 # digits: digits-cnn features
    python evaluate.py --ckpt results/001-XSwin-paper --num-samples 10000 --cfg-scale 1.5 \\
        --inception-weights ~/weights/weights-inception-2015-12-05-6726825d.pth
    python evaluate.py --samples my_samples/images --ref held_out_images/ --feature-extractor inception \\
        --inception-weights weights-inception-2015-12-05-6726825d.pth

With ``--ckpt`` the held-out split recorded by train.py (``split.json``, ``--eval-fraction``) is
the reference: it is exported once to ``RUN_DIR/eval/reference/``; generated images follow its
label distribution and are written to ``--out``/images. Results go to ``--out``/metrics.json.
"""
import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
from torch.utils.data import Dataset

from ..checkpoints import CheckpointError
from ..diffusion import PRECISIONS, SAMPLERS, autocast_dtype
from ..evaluation.metrics import ImageListDataset, TensorImageDataset, compute_metrics
from ..evaluation.reference import export_reference, reference_labels
from ..images import save_grid, save_pngs
from ..runs.config import BACKENDS
from ..runs.run_dir import load_run
from ..sampling import generate


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evaluate.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("what to evaluate")
    src.add_argument("--ckpt", help="train.py checkpoint (file, or run dir = newest): generate samples from it")
    src.add_argument("--samples", help="instead of --ckpt: a folder of generated images")
    src.add_argument("--ref", help="reference images folder (default: the run's held-out split)")
    gen = p.add_argument_group("generation (with --ckpt)")
    gen.add_argument("--num-samples", type=int, default=None, help="default: as many as reference images")
    gen.add_argument("--sampler", default="ddpm", choices=SAMPLERS)
    gen.add_argument("--steps", type=int, default=250)
    gen.add_argument("--cfg-scale", type=float, default=1.0, help="guidance scale (DiT's FID runs: 1.5; 1 = off)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--batch-size", type=int, default=256)
    gen.add_argument("--no-ema", action="store_true", help="evaluate the raw weights instead of the EMA")
    gen.add_argument("--device", default=None)
    gen.add_argument("--precision", default="auto", choices=PRECISIONS)
    gen.add_argument("--backend", default="auto", choices=BACKENDS, help="op backend of the model")
    met = p.add_argument_group("metrics")
    met.add_argument("--feature-extractor", default="auto", choices=["auto", "digits", "inception"],
                     help="auto: digits-cnn for digits runs, inception otherwise")
    met.add_argument("--inception-weights", help="local torch-fidelity Inception file (default: the torch hub cache)")
    met.add_argument("--digits-extractor-weights", help="digits-cnn weights (default cache path; trained if missing)")
    met.add_argument("--metrics", default="fid,isc,kid,prc", help="comma-separated subset of fid,isc,kid,prc")
    met.add_argument("--kid-subset-size", type=int, default=1000)
    met.add_argument("--isc-splits", type=int, default=10)
    met.add_argument("--prc-neighborhood", type=int, default=3)
    p.add_argument("--out", help="output folder (default RUN_DIR/eval/<step>-<sampler><steps>-cfg<scale>-seed<seed>)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
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


def _inputs_from_checkpoint(args: argparse.Namespace, progress: bool) -> _Inputs:
    """Generate images from ``--ckpt`` with the reference's label distribution, and save them."""
    try:
        run = load_run(args.ckpt, args.device, use_ema=not args.no_ema, backend=None if args.backend == "auto" else args.backend)
        ref_dir = Path(args.ref) if args.ref else export_reference(run.run_dir)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"cannot evaluate: {exc}")
    ref = ImageListDataset.from_folder(ref_dir)
    n = args.num_samples or len(ref)
    ref_labels = reference_labels(ref_dir) or list(range(run.data["num_classes"]))
    rng = np.random.default_rng(args.seed)
    labels = [ref_labels[i] for i in rng.permutation(np.resize(np.arange(len(ref_labels)), n))]
    images = generate(
        run.model, run.diffusion, labels, run.latent_shape, codec=run.codec, sampler=args.sampler, steps=args.steps,
        cfg_scale=args.cfg_scale, seed=args.seed, batch_size=args.batch_size,
        autocast_dtype=autocast_dtype(args.precision, run.device), progress=progress,
    )
    tag = f"{run.step:07d}-{args.sampler}{args.steps}-cfg{args.cfg_scale:g}-seed{args.seed}{'-raw' if args.no_ema else ''}"
    out = Path(args.out) if args.out else run.run_dir / "eval" / tag
    save_pngs(images, out / "images", names=[f"{i:06d}_c{lab}.png" for i, lab in enumerate(labels)])
    save_grid(images[:100], out / "grid.png")
    info = {"checkpoint": str(run.checkpoint), "step": run.step, "sampler": args.sampler, "steps": args.steps,
            "cfg_scale": args.cfg_scale, "seed": args.seed, "ema": not args.no_ema}
    return _Inputs(TensorImageDataset(images), ref, args.ref or str(ref_dir), out, run.data["kind"], info)


def _inputs_from_folders(args: argparse.Namespace) -> _Inputs:
    if not args.ref:
        raise SystemExit("--samples needs --ref (a folder of reference images)")
    out = Path(args.out) if args.out else Path(args.samples).parent / "eval"
    return _Inputs(
        ImageListDataset.from_folder(args.samples), ImageListDataset.from_folder(args.ref), args.ref, out, None,
        {"samples": str(args.samples)},
    )


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if bool(args.ckpt) == bool(args.samples):
        raise SystemExit("pass exactly one of --ckpt (generate) or --samples (a folder of images)")
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    inputs = _inputs_from_checkpoint(args, progress) if args.ckpt else _inputs_from_folders(args)
    fe = args.feature_extractor
    if fe == "auto":
        fe = "digits" if inputs.kind == "digits" else "inception"
    weights = args.digits_extractor_weights if fe == "digits" else args.inception_weights
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    result = compute_metrics(
        inputs.generated, inputs.reference, feature_extractor=fe, weights_path=weights, metrics=metrics,
        kid_subset_size=args.kid_subset_size, isc_splits=args.isc_splits, prc_neighborhood=args.prc_neighborhood,
        device=args.device, verbose=progress,
    )
    result.update(inputs.info)
    result["reference"] = inputs.reference_dir
    out = inputs.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    shown = ", ".join(f"{k} {result[k]:.4g}" for k in ("fid", "isc_mean", "kid_mean", "precision", "recall") if k in result)
    print(f"{shown} ({result['num_generated']} generated vs {result['num_reference']} reference, "
          f"{result['feature_extractor']} features) -> {out / 'metrics.json'}")
    return 0
