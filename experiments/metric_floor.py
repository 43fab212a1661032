"""The real-vs-real floor of the comparison's metrics: training images scored against the
held-out set exactly as a cell's samples are (same count, same features), so a model's FID can
be read against what real data of the same size gets.

    python experiments/metric_floor.py                      # both datasets -> RESULTS/floor.json and floor.md

Per dataset: three random draws (seeds 0, 1, 2) of --num-samples training images (at most the
held-out count) against the held-out set, and for Fashion-MNIST also all 60,000 training images
against the 10,000 test images. Takes the recipe flags of compare_backbones.py.
"""
import sys
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from xswin_fast.cli.user_errors import exit_on_user_error
from xswin_fast.data import FashionMNISTDataset
from xswin_fast.evaluation.metrics import TensorImageDataset, compute_metrics
from xswin_fast.runs.config import FASHION_MNIST

# the sibling files: a script's own folder is on sys.path
from compare_backbones import load_dataset, parse_args
from experiment_common import METRIC_NAMES, write_json

PROG = "metric_floor.py"
DRAWS = (0, 1, 2)


def score(images: torch.Tensor, reference: torch.Tensor, extractor: str, weights: Optional[str]) -> dict:
    result = compute_metrics(TensorImageDataset(images), TensorImageDataset(reference), feature_extractor=extractor,
                             weights_path=weights, device="cpu")
    return {k: result[k] for k in METRIC_NAMES}


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    floors = {}
    with exit_on_user_error(PROG):
        for dataset in args.datasets:
            spec = load_dataset(dataset, args)
            if dataset == FASHION_MNIST:  # draws from all 60,000 training images, not the sweep's subset
                full = FashionMNISTDataset(spec.train_flags["data_dir"], "train", image_size=args.fashion_size)
                pool = full.uint8_images()
            else:
                pool = spec.sweep_reference
            n = min(args.num_samples, len(spec.held_out))
            rows = {}
            for seed in DRAWS:
                pick = torch.from_numpy(np.random.default_rng(seed).permutation(len(pool))[:n])
                rows[f"{n} training images, draw {seed}"] = score(pool[pick], spec.held_out, spec.extractor, spec.extractor_weights)
            if dataset == FASHION_MNIST:
                rows[f"all {len(pool)} training images"] = score(pool, spec.held_out, spec.extractor, spec.extractor_weights)
            floors[dataset] = dict(reference=f"{len(spec.held_out)} held-out images", rows=rows)
            print(dataset, {name: round(r["fid"], 4) for name, r in rows.items()}, flush=True)
    results = Path(args.results)
    write_json(results / "floor.json", floors)
    lines = ["# Real-vs-real floor", "", f"`python experiments/{PROG}`: training images against the held-out set, "
             "scored like a cell's samples.", "", "| dataset | real images | FID | KID | precision | recall |",
             "|---|---|---:|---:|---:|---:|"]
    for dataset, f in floors.items():
        for name, r in f["rows"].items():
            lines.append(f"| {dataset} | {name} | {r['fid']:.3f} | {r['kid_mean']:.4f} | {r['precision']:.3f} | {r['recall']:.3f} |")
    (results / "floor.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {results / 'floor.json'} and {results / 'floor.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
