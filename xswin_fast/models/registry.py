"""Preset registry: ``create_model(name, **overrides)`` and ``list_models()``.

Each model file keeps a DiT-style presets dict, name -> (class, constructor kwargs); the
registry adds the presets of the built-in training job. Every model name a command line accepts
comes from here.
"""
from typing import Dict, List, Tuple

from .ascend import ASCEND_PRESETS
from .diffit import DIFFIT_PRESETS
from .dit import DIT_PRESETS
from .iuvit import IUVIT_PRESETS
from .xswin import XSWIN_PRESETS, XSwin

# train.py's built-in job: sklearn's 8x8 digits at their native size, 1 channel, 10 classes.
# Patch 1 and 2x2 windows over an 8x8 map with the global bottleneck at 4x4 tokens: the token
# geometry of the X-Swin paper's 8x8x4 latents, at a width that trains in minutes on a CPU.
DIGITS_PRESETS: Dict[str, Tuple[type, dict]] = {
    "XSwin-digits": (
        XSwin,
        dict(
            input_size=8, patch_size=1, in_channels=1, embed_dim=32, depths=(2, 2), num_heads=(1, 2),
            window_size=2, bottleneck_depth=1, num_classes=10, stochastic_depth_prob=0.0,
        ),
    ),
}

PRESETS: Dict[str, Tuple[type, dict]] = {
    **XSWIN_PRESETS, **DIT_PRESETS, **DIFFIT_PRESETS, **ASCEND_PRESETS, **IUVIT_PRESETS, **DIGITS_PRESETS,
}


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
