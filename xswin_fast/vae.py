"""The VAE of a latent-space run: a diffusers ``AutoencoderKL`` seen as pixels <-> scaled latents."""
import os
from typing import Optional, Tuple

import torch
import torch.nn as nn

from .compat import ensure_torchvision_importable

# DiT's --vae choices
VAE_ALIASES = {"ema": "stabilityai/sd-vae-ft-ema", "mse": "stabilityai/sd-vae-ft-mse"}


class LatentCodec:
    """A diffusers ``AutoencoderKL`` seen as pixels <-> scaled latents.

    ``encode_dist`` returns the posterior's mean and std (unscaled); ``to_latent`` applies DiT's
    ``(z - shift) * scaling_factor``; ``decode`` inverts it.
    """

    def __init__(self, vae: nn.Module, spec: str):
        self.vae = vae
        self.spec = spec
        cfg = vae.config
        self.scaling_factor = float(cfg.scaling_factor)
        self.shift_factor = float(getattr(cfg, "shift_factor", None) or 0.0)
        self.latent_channels = int(cfg.latent_channels)
        self.image_channels = int(cfg.in_channels)
        self.downsample = 2 ** (len(cfg.block_out_channels) - 1)

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @torch.no_grad()
    def encode_dist(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        dist = self.vae.encode(x.to(self.device, torch.float32)).latent_dist
        return dist.mean, dist.std

    def to_latent(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.encode_dist(x)
        return self.to_latent(mean + std * torch.randn_like(mean))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.float() / self.scaling_factor + self.shift_factor
        return self.vae.decode(z.to(self.device)).sample


def load_vae(spec: str, device: torch.device, subfolder: Optional[str] = None) -> LatentCodec:
    """``spec``: a local directory (``save_pretrained`` layout), a hub id, or "ema"/"mse" (DiT's).

    Hub ids resolve through the local Hugging Face cache; set ``HF_HUB_OFFLINE=1`` to forbid
    network access.
    """
    ensure_torchvision_importable()
    from diffusers import AutoencoderKL

    repo = VAE_ALIASES.get(spec, spec)
    kwargs = {"subfolder": subfolder} if subfolder else {}
    if os.path.isdir(repo) and subfolder is None and not os.path.isfile(os.path.join(repo, "config.json")):
        if os.path.isfile(os.path.join(repo, "vae", "config.json")):  # a whole pipeline directory
            kwargs["subfolder"] = "vae"
    try:
        vae = AutoencoderKL.from_pretrained(repo, **kwargs)
    except Exception as exc:
        raise RuntimeError(
            f"could not load the VAE {spec!r} ({type(exc).__name__}: {exc}). Pass a local directory written by "
            "AutoencoderKL.save_pretrained, or a hub id that is in the Hugging Face cache (or reachable)."
        ) from exc
    vae.eval().requires_grad_(False).to(device)
    return LatentCodec(vae, spec)
