"""xswin_fast: fast hierarchical Swin U-Net diffusion backbones (XSwin, USwin) with Triton kernels.

    from xswin_fast import XSwin, create_model
    model = create_model("XSwin-S/2", input_size=32, num_classes=1000)
    out = model(x, t, y)   # x (B, 4, H, W) latents, t (B,) timesteps, y (B,) labels
    model.save_pretrained("my-model"); model = xswin_fast.from_pretrained("my-model")
"""
from . import ops
from .models import DiT, USwin, UViT, XSwin, create_model, from_pretrained, list_models

__version__ = "0.1.0"

__all__ = ["ops", "XSwin", "USwin", "DiT", "UViT", "create_model", "list_models", "from_pretrained", "__version__"]
