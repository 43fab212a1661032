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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from .builders import LatentCodec, build_model, load_vae
from .checkpoint import CheckpointError, load_newest_checkpoint
from .diffusion import SAMPLERS, Diffusion
from .images import save_grid, save_pngs, to_uint8


@dataclass
class SamplingRun:
    """A trained model ready to sample: backbone (eval mode), diffusion, optional VAE."""

    model: torch.nn.Module
    diffusion: Diffusion
    codec: Optional[LatentCodec]
    data: Dict[str, Any]
    args: Dict[str, Any]
    step: int
    checkpoint: Path
    device: torch.device

    @property
    def run_dir(self) -> Path:
        p = self.checkpoint.parent
        return p.parent if p.name == "checkpoints" else p


def diffusion_from_config(config: Dict[str, Any]) -> Diffusion:
    return Diffusion(
        num_train_timesteps=int(config["num_train_timesteps"]),
        beta_schedule=config["beta_schedule"],
        beta_start=float(config["beta_start"]),
        beta_end=float(config["beta_end"]),
        learn_sigma=config["variance_type"] == "learned_range",
        clip_sample=bool(config["clip_sample"]),
    )


def load_run(ckpt: str, device: Optional[str] = None, use_ema: bool = True, backend: Optional[str] = None) -> SamplingRun:
    """Rebuild the model of a train.py checkpoint (file, checkpoints dir or run dir)."""
    path, ck = load_newest_checkpoint(ckpt)
    for key in ("model_name", "model_kwargs", "ema", "model", "diffusion", "data", "args"):
        if key not in ck:
            raise CheckpointError(f"{path} is not a train.py checkpoint (no {key!r})")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = build_model(ck["model_name"], ck["model_kwargs"])
    model.load_state_dict(ck["ema" if use_ema else "model"])
    model.set_backend(backend)
    model.to(dev).eval().requires_grad_(False)
    args = ck["args"]
    codec = load_vae(args["vae"], dev, args.get("vae_subfolder")) if args.get("vae") else None
    return SamplingRun(model, diffusion_from_config(ck["diffusion"]), codec, ck["data"], args, int(ck["step"]), Path(path), dev)


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


@torch.no_grad()
def generate(
    run: SamplingRun,
    labels: List[int],
    sampler: str = "ddpm",
    steps: int = 250,
    cfg_scale: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
    autocast_dtype: Optional[torch.dtype] = None,
    progress: bool = False,
) -> torch.Tensor:
    """uint8 images (N, C, H, W) for ``labels``; deterministic for a given seed and batch size."""
    d = run.data
    shape = (d["latent_channels"], d["latent_size"], d["latent_size"])
    gen = torch.Generator(device=run.device).manual_seed(seed)
    out = []
    chunks = range(0, len(labels), batch_size)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="sampling batches")
    for i in chunks:
        y = torch.tensor(labels[i : i + batch_size], device=run.device, dtype=torch.long)
        x = run.diffusion.sample(
            run.model, y, shape, sampler=sampler, steps=steps, cfg_scale=cfg_scale, generator=gen,
            autocast_dtype=autocast_dtype,
        )
        if run.codec is not None:
            x = run.codec.decode(x)
        out.append(to_uint8(x))
    return torch.cat(out)


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
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"], help="auto = bf16 autocast on CUDA")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "triton"])
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
    bf16 = args.precision == "bf16" or (args.precision == "auto" and run.device.type == "cuda")
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    images = generate(
        run, labels, args.sampler, args.steps, args.cfg_scale, args.seed, args.batch_size,
        torch.bfloat16 if bf16 else None, progress,
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
