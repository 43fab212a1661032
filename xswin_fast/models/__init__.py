from .base import DiffusionBackbone
from .dit import DiT, UViT
from .pretrained import from_pretrained
from .registry import PRESETS, create_model, list_models
from .xswin import USwin, XSwin

__all__ = ["DiffusionBackbone", "XSwin", "USwin", "DiT", "UViT", "PRESETS", "create_model", "list_models", "from_pretrained"]
