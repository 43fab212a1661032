"""xswin_fast: fast window-attention diffusion backbones (XSwin, USwin; DiT, UViT; DiffiT, ASCEND,
IU-ViT) with Triton kernels.

    from xswin_fast import XSwin, create_model
    model = create_model("XSwin-S/2", input_size=32, num_classes=1000)
    out = model(x, t, y)   # x (B, 4, H, W) latents, t (B,) timesteps, y (B,) labels
    model.save_pretrained("my-model"); model = xswin_fast.from_pretrained("my-model")
"""
from .installed_kernels import import_installed_kernels

import_installed_kernels()  # before diffusers imports transformers (see installed_kernels)

from . import ops  # noqa: E402
from .models import (  # noqa: E402
    ASCEND, DiffiT, DiT, IUViT, LatentDiffiT, USwin, UViT, XSwin, create_model, from_pretrained, list_models,
)

__version__ = "0.1.0"

_PIPELINES = ("XSwinPipeline", "DiTPipelineTransformer")


def __getattr__(name):
    # the pipelines import diffusers' pipeline machinery: loaded on first use, and reachable as
    # xswin_fast.<name> because that is where a pipeline folder's model_index.json finds them
    if name in _PIPELINES:
        from . import pipelines

        return getattr(pipelines, name)
    raise AttributeError(f"module 'xswin_fast' has no attribute {name!r}")


__all__ = [
    "ops", "XSwin", "USwin", "DiT", "UViT", "DiffiT", "LatentDiffiT", "ASCEND", "IUViT", "create_model", "list_models",
    "from_pretrained", *_PIPELINES, "__version__",
]
