"""``XSwinPipeline``: class-conditional or text-to-image generation with any backbone, a diffusers
scheduler, an optional VAE and, for a text model, its frozen text encoder and tokenizer, saved and
loaded as one diffusers pipeline folder."""
import inspect
import math
from numbers import Real
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils.torch_utils import randn_tensor

from ..layers import checks
from ..models.base import DiffusionBackbone
from ..objectives.guidance import TextCondition, encode_prompts
from ..text import DEFAULT_MAX_LENGTH, TextEmbeddings, TextEncoder


class XSwinPipeline(DiffusionPipeline):
    """Class-conditional sampling, ``pipe(class_labels=[207, 360], num_inference_steps=50)``, or
    text-to-image, ``pipe(prompt=["a sneaker"], negative_prompt="a blurry photo", guidance_scale=3)``.

    Args:
        transformer (DiffusionBackbone): XSwin, USwin, DiT, UViT or any other family.
        scheduler (diffusers SchedulerMixin): what the model predicts: for an eps model DDPM,
            DDIM, DPM-Solver++, Euler, ... (any ``set_timesteps`` / ``step`` scheduler predicting
            epsilon); for a flow-matching model (velocity) ``FlowMatchEulerDiscreteScheduler``
            or ``FlowMatchHeunDiscreteScheduler`` with the training's ``shift``.
        vae (AutoencoderKL, Optional): decodes latents to pixels; None for a pixel-space model
            (such as train.py's digits default), whose samples are the images in [-1, 1].
        id2label (Dict[int, str], Optional): class names (keys may be digit strings, as JSON
            stores them), saved in model_index.json;
            comma-separated synonyms each map to the class (as in DiTPipeline).
        text_encoder (transformers.PreTrainedModel, Optional): the frozen text encoder of a text
            model (built with ``text_dim`` = its width): T5 encoder, CLIP text model, BERT-like.
        tokenizer (transformers tokenizer, Optional): its tokenizer; given with ``text_encoder``.
        text_max_length (int, Optional): prompts are cut to this many tokens (default 77),
            saved in model_index.json.
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _optional_components = ["vae", "text_encoder", "tokenizer"]
    _callback_tensor_inputs = ["latents"]

    def __init__(self, transformer: DiffusionBackbone, scheduler, vae=None, id2label: Optional[dict] = None,
                 text_encoder=None, tokenizer=None, text_max_length: Optional[int] = None):
        super().__init__()
        text_dim = getattr(transformer, "text_dim", 0)
        if (text_encoder is None) != (tokenizer is None) or (text_encoder is None) != (text_dim == 0):
            raise ValueError(f"a text model (text_dim > 0) needs a text_encoder and a tokenizer, a class model neither; "
                             f"got text_dim={text_dim}, text_encoder {type(text_encoder).__name__}, "
                             f"tokenizer {type(tokenizer).__name__}")
        if text_encoder is not None and text_encoder.config.hidden_size != text_dim:
            raise ValueError(f"the text encoder's width {text_encoder.config.hidden_size} is not the model's text_dim {text_dim}")
        self.register_modules(transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder,
                              tokenizer=tokenizer)
        id2label = {int(k): str(v) for k, v in (id2label or {}).items()}  # JSON keys are strings
        max_length = None if text_encoder is None else (text_max_length or DEFAULT_MAX_LENGTH)
        self.register_to_config(id2label=id2label or None, text_max_length=max_length)
        self.labels = {name.strip(): k for k, v in id2label.items() for name in v.split(",")}

    @classmethod
    def load_config(cls, *args, **kwargs):
        """diffusers' ``load_config``, with the ``[module, "XSwinPipeline"]`` class name of a folder
        made by ``make_loadable_by_diffusers`` read as ``"XSwinPipeline"``: that module is for
        ``DiffusionPipeline.from_pretrained``; this class loads the folder without running it."""
        out = super().load_config(*args, **kwargs)
        config = out[0] if isinstance(out, tuple) else out
        name = config.get("_class_name")
        if isinstance(name, list) and len(name) == 2 and name[1] == cls.__name__:
            config["_class_name"] = name[1]
        return out

    @property
    def text(self) -> Optional[TextEncoder]:
        """The text encoder and tokenizer as a ``TextEncoder`` (None for a class model)."""
        if self.text_encoder is None:
            return None
        return TextEncoder(self.text_encoder, self.tokenizer, self.config.text_max_length)

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

    def _labels(self, class_labels, num_images_per_prompt: int) -> torch.Tensor:
        """(B * num_images_per_prompt,) int64 labels, each label repeated in place."""
        if class_labels is None or isinstance(class_labels, (str, bytes)):
            raise TypeError(f"class_labels must be an int, a sequence of ints or an int tensor, got {class_labels!r} "
                            "(pipe.get_label_ids turns names into ids)")
        n = self.transformer.num_classes
        try:
            y = torch.as_tensor(class_labels, device=self._execution_device).reshape(-1)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"class_labels must be an int, a sequence of ints or an int tensor, got {class_labels!r}") from None
        if y.numel() == 0 or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or y.min() < 0 or y.max() >= n:
            raise ValueError(f"class_labels must be one or more integer class ids in [0, {n}), got {class_labels!r}")
        return y.long().repeat_interleave(num_images_per_prompt)

    def _latent_size(self, height: Optional[int], width: Optional[int]):
        f = self.vae_scale_factor
        default = self.transformer.config.input_size * f
        height = default if height is None else checks.integer("height", height)
        width = default if width is None else checks.integer("width", width)
        if height % f or width % f:
            raise ValueError(f"height and width must be multiples of the VAE's factor {f}, got {height}x{width}")
        self.transformer.check_size(height // f, width // f)
        return height // f, width // f

    def _check_steps(self, num_inference_steps) -> int:
        most = self.scheduler.config.num_train_timesteps
        steps = checks.integer("num_inference_steps", num_inference_steps)
        if steps > most:
            raise ValueError(f"num_inference_steps must be at most the scheduler's num_train_timesteps {most}, got {steps}")
        return steps

    @staticmethod
    def _check_guidance(guidance_scale) -> float:
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, Real):
            raise TypeError(f"guidance_scale must be a float, got {guidance_scale!r}")
        if not (math.isfinite(guidance_scale) and guidance_scale >= 1):
            raise ValueError(f"guidance_scale must be a finite float >= 1 (1 samples without guidance), got {guidance_scale!r}")
        return float(guidance_scale)

    def _check_callback(self, callback, tensor_inputs: List[str]) -> List[str]:
        if isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)):
            tensor_inputs = callback.tensor_inputs
        elif callback is not None and not callable(callback):
            raise TypeError(f"callback_on_step_end must be callable (pipe, step, timestep, callback_kwargs), got {callback!r}")
        unknown = [name for name in tensor_inputs if name not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs must be among {self._callback_tensor_inputs}, got {unknown}")
        return list(tensor_inputs)

    def _initial_latents(self, latents, shape, generator) -> torch.Tensor:
        """The initial noise: drawn from ``generator``, or the caller's ``latents`` (checked),
        scaled by the scheduler's ``init_noise_sigma``."""
        device, dtype = self._execution_device, self.transformer.dtype
        each = generator if isinstance(generator, list) else [generator]
        if generator is not None and not all(isinstance(g, torch.Generator) for g in each):
            raise TypeError(f"generator must be a torch.Generator or a list of them, got {generator!r}")
        if isinstance(generator, list) and len(generator) != shape[0]:
            raise ValueError(f"generator must be one torch.Generator or a list of {shape[0]} (one per image), "
                             f"got a list of {len(generator)}")
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
            raise TypeError(f"latents must be a floating-point tensor, got {getattr(latents, 'dtype', type(latents).__name__)}")
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape} (images, channels, height, width in latents), "
                             f"got {tuple(latents.shape)}")
        return latents.to(device=device, dtype=dtype) * getattr(self.scheduler, "init_noise_sigma", 1.0)

    def _step_kwargs(self, generator) -> dict:
        # DDPM and Euler draw noise in step(); DDIM (eta 0) and DPM-Solver++ take no generator
        return {"generator": generator} if "generator" in inspect.signature(self.scheduler.step).parameters else {}

    def _prediction_for_scheduler(self, out: torch.Tensor, channels: int) -> torch.Tensor:
        """The model output a scheduler step takes: eps (or a flow model's velocity), plus the learned
        variance channels for a scheduler whose variance_type uses them (DDPM "learned_range")."""
        if out.shape[1] == 2 * channels and self.scheduler.config.get("variance_type") not in ("learned", "learned_range"):
            return out[:, :channels]
        return out

    @property
    def guidance_scale(self) -> float:
        """The guidance scale of the running (or last) call; a step-end callback may change it."""
        return self._guidance_scale

    @property
    def num_timesteps(self) -> int:
        """The number of denoising steps of the running (or last) call."""
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        """Set ``pipe._interrupt = True`` in a step-end callback to skip the remaining steps."""
        return self._interrupt

    @torch.no_grad()
    def __call__(
        self,
        class_labels: Union[None, int, Sequence[int], torch.Tensor] = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        latents: Optional[torch.Tensor] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        guided_channels: Optional[int] = None,
        callback_on_step_end: Optional[Union[Callable[..., Dict[str, Any]], PipelineCallback, MultiPipelineCallbacks]] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        prompt: Union[None, str, Sequence[str]] = None,
        negative_prompt: Union[None, str, Sequence[str]] = None,
    ):
        """Generate ``num_images_per_prompt`` images per label or prompt.

        Args:
            class_labels: class ids in [0, num_classes) (see ``get_label_ids`` for names): an int,
                a sequence of ints or an integer tensor; class models only.
            prompt (str or a sequence of str): text models only (instead of ``class_labels``).
            negative_prompt (str, a sequence of one per prompt, Optional): with guidance, the
                unconditional half of classifier-free guidance (default: the null caption).
            num_inference_steps (int): scheduler steps, in [1, scheduler's num_train_timesteps].
            guidance_scale (float): classifier-free guidance, finite and >= 1; > 1 runs the
                conditional and null class (or null caption, or negative prompt) in one batch (a
                class model needs class dropout, i.e. a null class); 1 samples without guidance.
            num_images_per_prompt (int): images per label or prompt, in their order (0, 0, 1, 1, ...).
            generator (torch.Generator or a list of one per image, Optional): the initial noise and
                the scheduler's noise.
            latents (torch.Tensor, Optional): the initial noise, (B * num_images_per_prompt,
                in_channels, h, w) in model space (h, w: height, width over the VAE factor),
                before the scheduler's ``init_noise_sigma`` scaling; default: drawn from ``generator``.
            height, width (int, Optional): image size in pixels, multiples of the VAE factor;
                default: the model's ``input_size`` times that factor. Rectangular sizes work
                for families that run at any size (XSwin, USwin); DiT and UViT need their own.
            output_type (str): "pil", "np" (B, H, W, C) in [0, 1], "pt" (B, C, H, W) in [0, 1],
                or "latent" (the model-space samples).
            return_dict (bool): an ``ImagePipelineOutput`` or a 1-tuple.
            guided_channels (int, Optional): eps channels CFG guides; default all (pass 3 for
                DiT's original quirk).
            callback_on_step_end (Optional): called after every step as ``callback(pipe, i, t,
                callback_kwargs)`` with the tensors named in ``callback_on_step_end_tensor_inputs``
                (only "latents"); it returns that dict, and the latents it returns continue.

        Returns:
            ``ImagePipelineOutput(images=...)``, or ``(images,)`` when ``return_dict`` is False.
        """
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
        model = self.transformer
        per_prompt = checks.integer("num_images_per_prompt", num_images_per_prompt)
        self._guidance_scale, self._interrupt = self._check_guidance(guidance_scale), False
        guided = self._guidance_scale > 1
        if self.text_encoder is not None:
            y = self._text_condition(class_labels, prompt, negative_prompt, per_prompt, guided)
        else:
            if prompt is not None or negative_prompt is not None:
                raise ValueError("prompt and negative_prompt need a text model (this pipeline has no text_encoder); "
                                 "pass class_labels")
            y = self._labels(class_labels, per_prompt)
            if guided and model.y_embedder.dropout_prob <= 0:
                raise ValueError("guidance_scale > 1 needs a null class: this model was built with class_dropout_prob=0")
        h, w = self._latent_size(height, width)
        steps = self._check_steps(num_inference_steps)
        tensor_inputs = self._check_callback(callback_on_step_end, list(callback_on_step_end_tensor_inputs))

        latents = self._initial_latents(latents, (len(y), model.config.in_channels, h, w), generator)
        latents = self._denoise(latents, y, steps, guided, guided_channels, generator, callback_on_step_end, tensor_inputs)
        images = self._decode(latents) if output_type != "latent" else latents
        if output_type in ("np", "pil"):
            images = images.permute(0, 2, 3, 1).float().cpu().numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(images)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def _text_condition(self, class_labels, prompt, negative_prompt, per_prompt: int, guided: bool) -> TextCondition:
        """The prompts' (and negative prompts') embeddings, each repeated ``per_prompt`` times."""
        if class_labels is not None:
            raise ValueError("class_labels need a class model; this pipeline's model is text-to-image: pass prompt")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt) if prompt is not None else []
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"prompt must be a str or a non-empty sequence of str, got {prompt!r}")
        if negative_prompt is not None and not guided:
            raise ValueError("negative_prompt acts through guidance: pass a guidance_scale > 1")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            negative_prompt = list(negative_prompt)
            negative_prompt = [n for n in negative_prompt for _ in range(per_prompt)] if len(negative_prompt) > 1 else negative_prompt
        prompts = [p for p in prompts for _ in range(per_prompt)]
        return encode_prompts(self.text, prompts, negative_prompt, self._execution_device)

    def _denoise(self, latents, y, steps, guided, guided_channels, generator, callback, tensor_inputs) -> torch.Tensor:
        """The scheduler's loop from the initial ``latents`` to the model-space samples; ``y``:
        labels (B,) or a ``TextCondition`` of B prompts."""
        model, device, channels = self.transformer, self._execution_device, latents.shape[1]
        text = isinstance(y, TextCondition)
        if text:
            inputs = TextEmbeddings.cat([y.prompts, y.unconditional()]) if guided else y.prompts
            kwargs = inputs.to(device, self.transformer.dtype).model_kwargs()
            y = None
        elif guided:
            y = torch.cat([y, torch.full_like(y, model.num_classes)])
        self.scheduler.set_timesteps(steps, device=device)
        self._num_timesteps = len(self.scheduler.timesteps)
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            if self.interrupt:
                continue
            # the flow-matching schedulers take the latents unscaled and have no scale_model_input
            scale = getattr(self.scheduler, "scale_model_input", None)
            x = scale(latents, t) if scale is not None else latents
            x = torch.cat([x, x]) if guided else x
            tt = t.to(device).expand(len(x))
            if text:
                out = model.forward_with_cfg(x, tt, None, self._guidance_scale, guided_channels, **kwargs) if guided \
                    else model(x, tt, **kwargs)
            else:
                out = model.forward_with_cfg(x, tt, y, self._guidance_scale, guided_channels) if guided else model(x, tt, y)
            out = self._prediction_for_scheduler(out[: len(latents)], channels)
            latents = self.scheduler.step(out, t, latents, **self._step_kwargs(generator)).prev_sample
            if callback is not None:
                state = {"latents": latents}
                outputs = callback(self, i, t, {name: state[name] for name in tensor_inputs})
                latents = outputs.pop("latents", latents)
        return latents

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Model-space samples -> (B, C, H, W) images in [0, 1]."""
        if self.vae is not None:
            cfg = self.vae.config
            z = latents / cfg.scaling_factor + (cfg.get("shift_factor") or 0.0)
            latents = self.vae.decode(z.to(self.vae.dtype)).sample
        return (latents.float() / 2 + 0.5).clamp(0, 1)
