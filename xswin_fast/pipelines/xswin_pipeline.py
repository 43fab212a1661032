"""``XSwinPipeline``: class-conditional generation with any backbone, a diffusers scheduler and
an optional VAE, saved and loaded as one diffusers pipeline folder."""
import inspect
from typing import List, Optional, Sequence, Union

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

from ..models.base import DiffusionBackbone


class XSwinPipeline(DiffusionPipeline):
    """Class-conditional sampling: ``pipe(class_labels=[207, 360], num_inference_steps=50)``.

    Args:
        transformer (DiffusionBackbone): XSwin, USwin, DiT, UViT or any other family.
        scheduler (diffusers SchedulerMixin): DDPM, DDIM, DPM-Solver++, Euler, ... (any
            ``set_timesteps`` / ``scale_model_input`` / ``step`` scheduler predicting epsilon).
        vae (AutoencoderKL, Optional): decodes latents to pixels; None for a pixel-space model
            (such as train.py's digits default), whose samples are the images in [-1, 1].
        id2label (Dict[int, str], Optional): class names (keys may be digit strings, as JSON
            stores them), saved in model_index.json;
            comma-separated synonyms each map to the class (as in DiTPipeline).
    """

    model_cpu_offload_seq = "transformer->vae"
    _optional_components = ["vae"]

    def __init__(self, transformer: DiffusionBackbone, scheduler, vae=None, id2label: Optional[dict] = None):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler, vae=vae)
        id2label = {int(k): str(v) for k, v in (id2label or {}).items()}  # JSON keys are strings
        self.register_to_config(id2label=id2label or None)
        self.labels = {name.strip(): k for k, v in id2label.items() for name in v.split(",")}

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent along each axis (1 without a VAE)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1

    def get_label_ids(self, labels: Union[str, Sequence[str]]) -> List[int]:
        """Class ids of label names (``id2label`` values or their comma-separated parts)."""
        labels = [labels] if isinstance(labels, str) else list(labels)
        unknown = [name for name in labels if name not in self.labels]
        if unknown:
            raise ValueError(f"unknown labels {unknown}; known: {sorted(self.labels)}")
        return [self.labels[name] for name in labels]

    def _labels(self, class_labels) -> torch.Tensor:
        y = torch.as_tensor(class_labels, device=self._execution_device).reshape(-1)
        n = self.transformer.num_classes
        if y.numel() == 0 or y.is_floating_point() or y.dtype == torch.bool or y.min() < 0 or y.max() >= n:
            raise ValueError(f"class_labels must be one or more integer class ids in [0, {n}), got {class_labels!r}")
        return y.long()

    def _latent_size(self, height: Optional[int], width: Optional[int]):
        f = self.vae_scale_factor
        default = self.transformer.config.input_size * f
        height, width = height or default, width or default
        if height % f or width % f:
            raise ValueError(f"height and width must be multiples of the VAE's factor {f}, got {height}x{width}")
        self.transformer.check_size(height // f, width // f)
        return height // f, width // f

    def _step_kwargs(self, generator) -> dict:
        # DDPM and Euler draw noise in step(); DDIM (eta 0) and DPM-Solver++ take no generator
        return {"generator": generator} if "generator" in inspect.signature(self.scheduler.step).parameters else {}

    def _eps_for_scheduler(self, out: torch.Tensor, channels: int) -> torch.Tensor:
        """The model output a scheduler step takes: eps, plus the learned variance channels for a
        scheduler whose variance_type uses them (DDPM "learned_range")."""
        if out.shape[1] == 2 * channels and self.scheduler.config.get("variance_type") not in ("learned", "learned_range"):
            return out[:, :channels]
        return out

    @torch.no_grad()
    def __call__(
        self,
        class_labels: Union[int, Sequence[int], torch.Tensor],
        num_inference_steps: int = 50,
        guidance_scale: float = 4.0,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        guided_channels: Optional[int] = None,
    ):
        """Generate one image per label.

        Args:
            class_labels: class ids in [0, num_classes) (see ``get_label_ids`` for names).
            num_inference_steps (int): scheduler steps.
            guidance_scale (float): classifier-free guidance; > 1 runs the conditional and null
                class in one batch (the model needs class dropout, i.e. a null class).
            generator (torch.Generator or a list of them, Optional): the initial noise and the
                scheduler's noise.
            height, width (int, Optional): image size in pixels, multiples of the VAE factor;
                default: the model's ``input_size`` times that factor. Rectangular sizes work
                for families that run at any size (XSwin, USwin); DiT and UViT need their own.
            output_type (str): "pil", "np" (B, H, W, C) in [0, 1], "pt" (B, C, H, W) in [0, 1],
                or "latent" (the model-space samples).
            guided_channels (int, Optional): eps channels CFG guides; default all (pass 3 for
                DiT's original quirk).

        Returns:
            ``ImagePipelineOutput(images=...)``, or ``(images,)`` when ``return_dict`` is False.
        """
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
        model, device = self.transformer, self._execution_device
        y = self._labels(class_labels)
        h, w = self._latent_size(height, width)
        channels = model.config.in_channels
        guided = guidance_scale > 1
        if guided and model.y_embedder.dropout_prob <= 0:
            raise ValueError("guidance_scale > 1 needs a null class: this model was built with class_dropout_prob=0")

        latents = randn_tensor((len(y), channels, h, w), generator=generator, device=device, dtype=model.dtype)
        latents = latents * self.scheduler.init_noise_sigma
        if guided:
            y = torch.cat([y, torch.full_like(y, model.num_classes)])
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        for t in self.progress_bar(self.scheduler.timesteps):
            x = self.scheduler.scale_model_input(latents, t)
            x = torch.cat([x, x]) if guided else x
            tt = t.to(device).expand(len(x))
            out = model.forward_with_cfg(x, tt, y, guidance_scale, guided_channels) if guided else model(x, tt, y)
            out = self._eps_for_scheduler(out[: len(latents)], channels)
            latents = self.scheduler.step(out, t, latents, **self._step_kwargs(generator)).prev_sample

        images = self._decode(latents) if output_type != "latent" else latents
        if output_type in ("np", "pil"):
            images = images.permute(0, 2, 3, 1).float().cpu().numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(images)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Model-space samples -> (B, C, H, W) images in [0, 1]."""
        if self.vae is not None:
            cfg = self.vae.config
            z = latents / cfg.scaling_factor + (cfg.get("shift_factor") or 0.0)
            latents = self.vae.decode(z.to(self.vae.dtype)).sample
        return (latents.float() / 2 + 0.5).clamp(0, 1)
