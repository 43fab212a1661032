"""Preset registry: ``create_model(name, **overrides)`` and ``list_models()``.

Each model file keeps a DiT-style presets dict, name -> (class, constructor kwargs); the
registry adds the presets of the built-in training job. Every model name a command line accepts
comes from here.
"""
from typing import Dict, List, Tuple

from .ascend import ASCEND, ASCEND_PRESETS
from .diffit import DIFFIT_PRESETS, DiffiT
from .dit import DIT_PRESETS, DiT, UViT
from .iuvit import IUVIT_PRESETS, IUViT
from .xswin import XSWIN_PRESETS, USwin, XSwin

# train.py's built-in job: sklearn's 8x8 digits at their native size, 1 channel, 10 classes.
# Patch 1 and 2x2 windows over an 8x8 map with the global bottleneck at 4x4 tokens: the token
# geometry of the X-Swin paper's 8x8x4 latents, at a width that trains in minutes on a CPU.
_SWIN_DIGITS = dict(
    input_size=8, patch_size=1, in_channels=1, embed_dim=32, depths=(2, 2), num_heads=(1, 2),
    window_size=2, bottleneck_depth=1, num_classes=10, stochastic_depth_prob=0.0,
)
# The Table-1 baselines at the digits' scale (experiments/table1_digits.py, docs/table1.md), each
# within 10% of XSwin-digits' 0.75M parameters. USwin is XSwin without the cross-attention skips,
# as in the paper's ablation (-4.5%). DiT and UViT take patch 1: the DiT paper's FID improves with
# every halving of the patch at fixed parameters, an 8x8 grid affords the 64 tokens, and every
# model then sees one token per pixel; width 64 is XSwin-digits' bottleneck width, head dim 32 its
# own, and 9 blocks match the parameters (DiT -5.8%, UViT -1.3% with its skip projections).
_VIT_DIGITS = dict(input_size=8, patch_size=1, in_channels=1, hidden_size=64, depth=9, num_heads=2, num_classes=10)
# The other papers' backbones at the same scale and token layout (patch 1 or none, 2x2 windows),
# with learned sigma like the four above (one recipe):
# DiffiT's window-TMSA U-Net over 8, 4, 2-token maps (-0.1%), ASCEND's Swin-pair encoder on two
# 32-channel levels (+8.6%), IU-ViT as UViT-digits with 13 blocks (+1.0%).
DIGITS_PRESETS: Dict[str, Tuple[type, dict]] = {
    "XSwin-digits": (XSwin, dict(_SWIN_DIGITS)),
    "USwin-digits": (USwin, dict(_SWIN_DIGITS)),
    "UViT-digits": (UViT, dict(_VIT_DIGITS)),
    "DiT-digits": (DiT, dict(_VIT_DIGITS)),
    "DiffiT-digits": (DiffiT, dict(
        input_size=8, in_channels=1, channels=(32, 64, 64), depths=(1, 2, 1), num_heads=(1, 2, 2), window_size=2,
        time_dim=64, num_classes=10, learn_sigma=True,
    )),
    "ASCEND-digits": (ASCEND, dict(
        input_size=8, in_channels=1, channels=32, channel_mult=(1, 1), depth=2, attention_downsample=(1, 2),
        head_channels=32, window_size=2, dropout=0.0, num_classes=10, learn_sigma=True,
    )),
    "IUViT-digits": (IUViT, dict(_VIT_DIGITS, depth=13, learn_sigma=True)),
}

PRESETS: Dict[str, Tuple[type, dict]] = {
    **XSWIN_PRESETS, **DIT_PRESETS, **DIFFIT_PRESETS, **ASCEND_PRESETS, **IUVIT_PRESETS, **DIGITS_PRESETS,
}
# Presets that model pixels at their own input_size (no VAE): the papers' CIFAR/FFHQ/CelebA
# models and the digits. Every other preset models SD-VAE latents (1/8 of the image size).
PIXEL_PRESETS: Tuple[str, ...] = (
    *(name for name, (cls, _) in DIFFIT_PRESETS.items() if cls is DiffiT), *ASCEND_PRESETS, *IUVIT_PRESETS,
    *DIGITS_PRESETS,
)


def list_models() -> List[str]:
    """Names of every preset, e.g. "XSwin-S/2", "XSwin-paper", "XSwin-digits", "DiT-XL/2", "UViT-S/2"."""
    return list(PRESETS)


def create_model(name: str, **overrides):
    """Build preset ``name`` with constructor keyword ``overrides`` (e.g. input_size, num_classes)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a model name (str), got {name!r}")
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(PRESETS)}")
    cls, kwargs = PRESETS[name]
    return cls(**{**kwargs, **overrides})
