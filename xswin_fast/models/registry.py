"""Preset registry: ``create_model(name, **overrides)`` and ``list_models()``.

Each model file keeps a DiT-style presets dict, name -> (class, constructor kwargs).
"""
from typing import Dict, List, Tuple

from .dit import DIT_PRESETS
from .xswin import XSWIN_PRESETS

PRESETS: Dict[str, Tuple[type, dict]] = {**XSWIN_PRESETS, **DIT_PRESETS}


def list_models() -> List[str]:
    """Names of every preset, e.g. "XSwin-S/2", "XSwin-paper", "DiT-XL/2", "UViT-S/2"."""
    return list(PRESETS)


def create_model(name: str, **overrides):
    """Build preset ``name`` with constructor keyword ``overrides`` (e.g. input_size, num_classes)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(PRESETS)}")
    cls, kwargs = PRESETS[name]
    return cls(**{**kwargs, **overrides})
