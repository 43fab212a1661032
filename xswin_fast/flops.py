"""Honest forward FLOPs per image and the preset table of the README.

``torch.utils.flop_counter.FlopCounterMode`` does not count the CPU flash path of
``scaled_dot_product_attention``, so counting runs under the MATH backend, where attention
decomposes into counted matmuls (docs/design.md §5). Counting runs on the meta device: no memory,
no compute.

    python -m xswin_fast.flops            # markdown table of every latent preset at 256 px
    python -m xswin_fast.flops --models ASCEND-32 DiffiT-CIFAR10   # pixel-space presets at their size
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
    ``batch`` images in the model's dtype (a text model with ``example_conditions``' 256 text tokens)."""
    latent_size, batch = checks.integer("latent_size", latent_size), checks.integer("batch", batch)
    weight = next(model.parameters())
    device = weight.device
    x = torch.randn(batch, model.in_channels, latent_size, latent_size, device=device, dtype=weight.dtype)
    t = torch.zeros(batch, device=device)
    conditions = model.example_conditions(batch, device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(x, t, **conditions)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / batch


def preset_table(image_size: int = 256, names: Optional[list] = None) -> str:
    """Markdown table: preset, parameters (M), forward GFLOPs per image. Latent presets are
    counted at ``image_size`` px (a multiple of 8: the SD VAE's latent is 1/8 of it), pixel-space
    presets (``PIXEL_PRESETS``) at their own ``input_size``, named so in the table. ``names``
    (list of str or None): the presets; None is every latent preset."""
    from .models.registry import PIXEL_PRESETS, PRESETS, create_model

    if checks.integer("image_size", image_size) % 8:
        raise ValueError(f"image_size must be a multiple of 8 (the SD VAE's downsampling), got {image_size}")
    rows = ["| preset | params (M) | GFLOPs / image |", "|---|---:|---:|"]
    for name in names or [n for n in PRESETS if n not in PIXEL_PRESETS]:
        pixels = name in PIXEL_PRESETS
        with torch.device("meta"):
            model = create_model(name) if pixels else create_model(name, input_size=image_size // 8)
        size = model.input_size
        label = f"{name} ({size}-px images)" if pixels else name
        rows.append(f"| {label} | {count_parameters(model) / 1e6:.2f} | {forward_flops(model, size) / 1e9:.2f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=256,
                        help="pixels of the latent presets; the latent is 1/8 of it (SD VAE)")
    parser.add_argument("--models", nargs="*", default=None,
                        help="preset names (default: every latent preset; pixel-space ones at their own size)")
    args = parser.parse_args()
    try:
        print(preset_table(args.image_size, args.models))
    except (TypeError, ValueError) as e:
        parser.error(str(e))


if __name__ == "__main__":
    main()
