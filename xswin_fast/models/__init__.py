from .ascend import ASCEND
from .base import DiffusionBackbone
from .diffit import DiffiT, LatentDiffiT
from .dit import DiT, UViT
from .iuvit import IUViT
from .pretrained import from_pretrained
from .registry import PRESETS, create_model, list_models
from .xswin import USwin, XSwin

__all__ = [
    "DiffusionBackbone", "XSwin", "USwin", "DiT", "UViT", "DiffiT", "LatentDiffiT", "ASCEND", "IUViT", "PRESETS",
    "create_model", "list_models", "from_pretrained",
]
