"""``sample.py``: images from a train.py checkpoint (EMA weights by default).

    python sample.py --ckpt results/000-XSwin-digits                   # newest checkpoint of the run
    python sample.py --ckpt results/000-XSwin-S-2/checkpoints/0400000.pt --num-samples 64 \\
        --labels 207,360,387,974 --cfg-scale 4.0 --sampler ddim --steps 50 --seed 1

Writes ``grid.png`` and one PNG per image under ``images/`` (the folder FID tools read) plus
``labels.json`` into ``--out`` (default: RUN_DIR/samples-<step>-<sampler><steps>-cfg<scale>-seed<seed>).
"""
import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

from ..checkpoints import CheckpointError
from ..diffusion import PRECISIONS, SAMPLERS, autocast_dtype
from ..images import save_grid, save_pngs
from ..runs.config import BACKENDS
from ..runs.run_dir import load_run
from ..sampling import generate


def parse_labels(spec: Optional[str], n: int, classes: List[str]) -> List[int]:
    """Comma-separated class indices or names, repeated to ``n``; default: cycle through all classes."""
    if not spec:
        return [i % len(classes) for i in range(n)]
    out = []
    for tok in spec.split(","):
        tok = tok.strip()
        if tok in classes and not tok.isdigit():
            out.append(classes.index(tok))
        else:
            try:
                v = int(tok)
            except ValueError:
                raise SystemExit(f"unknown label {tok!r}; classes are: {', '.join(classes[:20])}{' ...' if len(classes) > 20 else ''}")
            if not 0 <= v < len(classes):
                raise SystemExit(f"label {v} out of range [0, {len(classes)})")
            out.append(v)
    return [out[i % len(out)] for i in range(n)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sample.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint file, or a run / checkpoints dir (newest checkpoint)")
    p.add_argument("--num-samples", type=int, default=100, help="images to generate")
    p.add_argument("--labels", help="comma-separated class indices or names, repeated to --num-samples; default: all classes in turn")
    p.add_argument("--cfg-scale", type=float, default=1.5, help="classifier-free guidance scale (1 = off); DiT used 4.0 for visuals, 1.5 for FID")
    p.add_argument("--sampler", default="ddpm", choices=SAMPLERS, help="ddpm (respaced, learned variance) or ddim (eta 0)")
    p.add_argument("--steps", type=int, default=250, help="sampling steps (DiT: 250 DDPM)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-ema", action="store_true", help="use the raw model weights instead of the EMA")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help="auto = bf16 autocast on CUDA")
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--nrow", type=int, default=None, help="images per grid row (default: number of classes if <= 32)")
    p.add_argument("--out", default=None, help="output folder")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run = load_run(args.ckpt, args.device, use_ema=not args.no_ema, backend=None if args.backend == "auto" else args.backend)
    except CheckpointError as exc:
        raise SystemExit(f"cannot sample: {exc}")
    classes = run.data["classes"]
    labels = parse_labels(args.labels, args.num_samples, classes)
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    images = generate(
        run.model, run.diffusion, labels, run.latent_shape, codec=run.codec, sampler=args.sampler, steps=args.steps,
        cfg_scale=args.cfg_scale, seed=args.seed, batch_size=args.batch_size,
        autocast_dtype=autocast_dtype(args.precision, run.device), progress=progress,
    )
    tag = f"samples-{run.step:07d}-{args.sampler}{args.steps}-cfg{args.cfg_scale:g}-seed{args.seed}{'-raw' if args.no_ema else ''}"
    out = Path(args.out) if args.out else run.run_dir / tag
    out.mkdir(parents=True, exist_ok=True)
    nrow = args.nrow or (len(classes) if len(classes) <= 32 else None)
    grid = save_grid(images, out / "grid.png", nrow=nrow)
    save_pngs(images, out / "images", names=[f"{i:06d}_c{lab}.png" for i, lab in enumerate(labels)])
    (out / "labels.json").write_text(json.dumps({"labels": labels, "classes": classes}))
    print(f"wrote {len(labels)} images to {out / 'images'} and the grid {grid}")
    return 0
