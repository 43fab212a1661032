"""Honest forward FLOPs per image and the preset table of the README.

``torch.utils.flop_counter.FlopCounterMode`` does not count the CPU flash path of
``scaled_dot_product_attention``, so counting runs under the MATH backend, where attention
decomposes into counted matmuls (docs/design.md §5). Counting runs on the meta device: no memory,
no compute.

    python -m xswin_fast.flops            # markdown table of every preset at 256 px
"""
import argparse
from typing import Optional

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from .layers import checks


def count_parameters(model: torch.nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def forward_flops(model: torch.nn.Module, latent_size: int, batch: int = 2) -> float:
    """Forward FLOPs per image (multiply-add = 2 FLOPs) at a square ``latent_size`` latent, with
    ``batch`` images in the model's dtype."""
    latent_size, batch = checks.integer("latent_size", latent_size), checks.integer("batch", batch)
    weight = next(model.parameters())
    device = weight.device
    x = torch.randn(batch, model.in_channels, latent_size, latent_size, device=device, dtype=weight.dtype)
    t = torch.zeros(batch, device=device)
    y = torch.zeros(batch, dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(x, t, y)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / batch


def preset_table(image_size: int = 256, names: Optional[list] = None) -> str:
    """Markdown table: preset, parameters (M), forward GFLOPs per image at ``image_size`` px (a
    multiple of 8: the SD VAE's latent is 1/8 of it)."""
    from .models.registry import PRESETS, create_model

    if checks.integer("image_size", image_size) % 8:
        raise ValueError(f"image_size must be a multiple of 8 (the SD VAE's downsampling), got {image_size}")
    latent = image_size // 8
    rows = ["| preset | params (M) | GFLOPs / image |", "|---|---:|---:|"]
    for name in names or list(PRESETS):
        overrides = {"input_size": latent}
        with torch.device("meta"):
            model = create_model(name, **overrides)
        rows.append(
            f"| {name} | {count_parameters(model) / 1e6:.2f} | {forward_flops(model, latent) / 1e9:.2f} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=256, help="pixels; the latent is 1/8 of it (SD VAE)")
    parser.add_argument("--models", nargs="*", default=None, help="preset names (default: all)")
    args = parser.parse_args()
    try:
        print(preset_table(args.image_size, args.models))
    except (TypeError, ValueError) as e:
        parser.error(str(e))


if __name__ == "__main__":
    main()
