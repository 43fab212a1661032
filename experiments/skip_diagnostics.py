"""What of an encoder skip reaches XSwin's decoder, and how much gradient flows back through it
(docs/comparison.md, "Why XSwin's skips trail concatenation"). One batch of noised training
images, per decoder stage of each model:

    python experiments/skip_diagnostics.py --init                   # XSwin-digits (each skip_fusion) and USwin-digits at init
    python experiments/skip_diagnostics.py --ckpt RUN [RUN ...]     # trained train.py runs (a run folder or checkpoint file)
    python experiments/skip_diagnostics.py --ckpt RUN --data fashion-mnist --image-size 16

Columns: ``detail`` the share of the skip's variance that is within-window (finest-scale) detail;
``kept`` the R^2 of that detail predicted linearly, token by token, from the within-window detail
of what the decoder's first block receives in the skip's place (USwin: the skip itself, so 1);
``self`` the mean attention weight of a query on the key at its own position (uniform: 1/N for N
window tokens); ``rms h`` and ``rms skip`` the root-mean-square of the two halves of the
concatenation; ``branch`` the RMS of the attention branch over the raw skip's; ``grad``
||dL/d skip|| through the skip path over ||dL/d h|| of the decoder half, for the eps MSE loss
(the learned-sigma term left out).
"""
import argparse
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from xswin_fast.cli.user_errors import ArgumentParser, exit_on_user_error, positive_int
from xswin_fast.data import DigitsDataset, FashionMNISTDataset, stratified_split
from xswin_fast.data.fashion_mnist import find_fashion_mnist
from xswin_fast.layers.attention import WindowCrossAttention, effective_window
from xswin_fast.models import create_model
from xswin_fast.runs.run_dir import load_run

PROG = "skip_diagnostics.py"
T_STEPS = 1000  # training's DDPM schedule: linear betas 1e-4 .. 0.02 over 1000 steps


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", action="store_true", help="XSwin-digits (replace, sum, residual) and USwin-digits at init")
    p.add_argument("--ckpt", nargs="*", default=[], help="train.py run folders or checkpoint files (their EMA weights)")
    p.add_argument("--data", choices=("digits", "fashion-mnist"), default="digits", help="the images (default digits)")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST's IDX files (default: the installed package's)")
    p.add_argument("--image-size", type=positive_int, default=8, help="Fashion-MNIST's size (default 8: digits)")
    p.add_argument("--batch", type=positive_int, default=256, help="images (default 256)")
    p.add_argument("--seed", type=int, default=0, help="init, image, time and noise seed (default 0)")
    return p


def training_batch(args: argparse.Namespace) -> Tuple[torch.Tensor, torch.Tensor]:
    """(images (B, 1, S, S) in [-1, 1], labels (B,)) drawn from the training split."""
    if args.data == "digits":
        ids, _ = stratified_split(DigitsDataset().all_targets, 0.2, 0)
        data = DigitsDataset(ids)
    else:
        data = FashionMNISTDataset(str(find_fashion_mnist(args.data_dir)), "train", image_size=args.image_size)
    pick = np.random.default_rng(args.seed).permutation(len(data.targets))[: args.batch]
    return data.images[pick], torch.as_tensor([data.targets[i] for i in pick])


def window_detail(t: torch.Tensor, window: Tuple[int, int]) -> torch.Tensor:
    """(B, H, W, C) minus its mean over each window (H, W divisible by the window)."""
    B, H, W, C = t.shape
    v = t.reshape(B, H // window[0], window[0], W // window[1], window[1], C)
    return (v - v.mean(dim=(2, 4), keepdim=True)).reshape(B, H, W, C)


def r_squared(x: torch.Tensor, y: torch.Tensor) -> float:
    """R^2 of the least-squares linear map (no intercept) from tokens x (N, Cx) to y (N, Cy)."""
    w = torch.linalg.lstsq(x.double(), y.double()).solution
    return 1 - float((y.double() - x.double() @ w).square().sum() / y.double().square().sum())


def self_weight(layer: WindowCrossAttention, x, skip, silu_c, window, branch) -> float:
    """Mean attention weight of a query on the key at its own position; checks that the
    recomputed attention gives the layer's ``branch`` output."""
    B, H, W, C = x.shape
    heads, d = layer.num_heads, C // layer.num_heads
    q = layer.q(layer.mod_x(x, silu_c))
    k, v = layer.kv(layer.mod_r(skip, silu_c)).chunk(2, dim=-1)

    def windows(t):  # (B, H, W, C) -> (B * windows, heads, N, d)
        t = t.reshape(B, H // window[0], window[0], W // window[1], window[1], heads, d)
        return t.permute(0, 1, 3, 5, 2, 4, 6).reshape(-1, heads, window[0] * window[1], d)

    p = torch.softmax(windows(q) @ windows(k).transpose(-2, -1) * d**-0.5, dim=-1)
    o = (p @ windows(v)).reshape(B, H // window[0], W // window[1], heads, window[0], window[1], d)
    o = o.permute(0, 1, 4, 2, 5, 3, 6).reshape(B, H, W, C)
    torch.testing.assert_close(layer.norm(layer.proj(o)), branch, rtol=1e-4, atol=1e-4)
    return float(p.diagonal(dim1=-2, dim2=-1).mean())


def stage_rows(model, images: torch.Tensor, labels: torch.Tensor, seed: int) -> List[Dict[str, float]]:
    """The diagnostics of every decoder stage (outermost last) of an XSwin/USwin ``model``."""
    seen: List[Dict[str, torch.Tensor]] = [dict() for _ in model.decoder]
    hooks = []
    for stage, box in zip(model.decoder, seen):
        def on_block(module, args, box=box):  # the concatenation [h, skip] entering the 2C block
            cat = args[0].view_as(args[0])
            cat.retain_grad()
            box["cat"] = cat
            return (cat, *args[1:])
        hooks.append(stage.blocks[0].register_forward_pre_hook(on_block))
        if stage.skip_attn is not None:
            def on_skip(module, args, box=box):
                skip = args[1].view_as(args[1])
                skip.retain_grad()
                box.update(x=args[0], skip=skip, silu_c=args[2])
                return (args[0], skip, args[2])
            hooks.append(stage.skip_attn.register_forward_pre_hook(on_skip))
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, T_STEPS, (len(images),), generator=g)
    noise = torch.randn(images.shape, generator=g)
    a = torch.cumprod(1 - torch.linspace(1e-4, 0.02, T_STEPS, dtype=torch.float64), 0)[t].float().view(-1, 1, 1, 1)
    x_t = (a.sqrt() * images + (1 - a).sqrt() * noise).requires_grad_(True)
    try:
        out = model(x_t, t, labels)
        F.mse_loss(out[:, : model.in_channels], noise).backward()
    finally:
        for h in hooks:
            h.remove()
    rows = []
    for stage, box in zip(model.decoder, seen):
        cat = box["cat"]
        C = cat.shape[-1] // 2
        h_half, fused = cat[..., :C].detach(), cat[..., C:].detach()
        window = effective_window(cat.shape[1], cat.shape[2], model.window_size, (0, 0))[0]
        if stage.skip_attn is None:
            skip, grad_skip, weight, branch_rms = fused, cat.grad[..., C:], float("nan"), float("nan")
        else:
            skip, grad_skip = box["skip"].detach(), box["skip"].grad
            branch = fused - skip if stage.skip_attn.fusion != "replace" else fused
            branch_rms = float(branch.square().mean().sqrt() / skip.square().mean().sqrt())
            with torch.no_grad():
                weight = self_weight(stage.skip_attn, box["x"], skip, box["silu_c"], window, branch)
        detail = window_detail(skip, window)
        centred = skip - skip.mean(dim=(1, 2), keepdim=True)
        rows.append(dict(
            stage=f"{cat.shape[1]}x{cat.shape[2]}, C={C}, window {window[0]}x{window[1]}",
            detail=float(detail.square().sum() / centred.square().sum()),
            kept=r_squared(window_detail(fused, window).reshape(-1, C), detail.reshape(-1, C)),
            self=weight, rms_h=float(h_half.square().mean().sqrt()), rms_skip=float(fused.square().mean().sqrt()),
            branch=branch_rms, grad=float(grad_skip.norm() / cat.grad[..., :C].norm()),
        ))
    return rows


def models_of(args: argparse.Namespace):
    """(label, model) of every model asked for, on the CPU, eval mode, torch backend."""
    if args.init:
        digits = dict(input_size=8, in_channels=1, num_classes=10)
        for name, kwargs in (("XSwin-digits", dict(skip_fusion="replace")), ("XSwin-digits", dict(skip_fusion="sum")),
                             ("XSwin-digits", dict(skip_fusion="residual")), ("USwin-digits", {})):
            torch.manual_seed(args.seed)
            model = create_model(name, **digits, **kwargs).set_backend("torch").eval()
            yield f"{name} {kwargs.get('skip_fusion', 'concatenation')}, init", model
    for path in args.ckpt:
        run = load_run(path, "cpu", backend="torch")
        fusion = getattr(run.model.config, "skip_fusion", "replace") if run.model.cross_attention_skips else "concatenation"
        yield f"{Path(path).name} ({fusion}, step {run.step})", run.model


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    with exit_on_user_error(PROG):
        if not args.init and not args.ckpt:
            raise SystemExit(f"{PROG}: nothing to diagnose: pass --init and/or --ckpt RUN")
        images, labels = training_batch(args)
        print("| model | stage | detail | kept | self | rms h | rms skip | branch | grad |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for label, model in models_of(args):
            for r in stage_rows(model, images, labels, args.seed):
                self_w, branch = ("-", "-") if math.isnan(r["self"]) else (f"{r['self']:.3f}", f"{r['branch']:.2f}")
                print(f"| {label} | {r['stage']} | {r['detail']:.2f} | {r['kept']:.2f} | {self_w} | {r['rms_h']:.2f} | "
                      f"{r['rms_skip']:.2f} | {branch} | {r['grad']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
