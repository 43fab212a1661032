"""The interface every backbone shares: ``model(x, t, y)``, ``forward_with_cfg``, backend and
gradient-checkpointing switches, input checks, and the diffusers model format (``ModelMixin`` +
``ConfigMixin``: ``save_pretrained`` / ``from_pretrained`` of a config.json + safetensors folder)."""
import functools
import inspect
import math
import sys
from numbers import Real
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from torch.utils.checkpoint import checkpoint

from ..layers import checks
from ..layers.embed import check_labels
from ..layers.text import TextInputs, check_text
from ..ops.dispatch import check_backend
from .verified_weights import VerifiedWeights


def _checkpoint_block(block: nn.Module, *args):
    return checkpoint(block, *args, use_reentrant=False)


def _register_outermost(init):
    """``register_to_config(init)`` when ``init`` is the instance's own ``__init__``; a parent's
    ``__init__`` called through ``super()`` records nothing (the subclass's arguments are its config)."""
    registering = register_to_config(init)

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        (registering if type(self).__init__ is __init__ else init)(self, *args, **kwargs)

    return __init__


class DiffusionBackbone(VerifiedWeights, ModelMixin, ConfigMixin):
    """Base class of every backbone: XSwin, USwin, DiT, UViT, DiffiT, LatentDiffiT, ASCEND and IUViT.

    Subclasses set ``in_channels``, ``out_channels``, ``learn_sigma``, ``num_classes``,
    ``y_embedder`` (None when ``num_classes`` is 0), ``text_dim`` and ``text_embedder`` (None when
    ``text_dim`` is 0) and implement ``forward(x, t, y=None, encoder_hidden_states=None,
    encoder_attention_mask=None, pooled_text=None, return_dict=None)`` with x (B, in_channels,
    H, W) latents, t (B,) timesteps, y (B,) integer labels (``num_classes`` is the null class)
    and the text inputs of ``check_text``; the output is (B, out_channels, H, W) with
    ``out_channels = 2 * in_channels`` under learned sigma. ``conditions`` checks the inputs and
    embeds them; ``forward`` returns through ``_output``.

    Every subclass is a diffusers model without further code: its ``__init__`` is wrapped in
    ``register_to_config`` when the class is defined (so its constructor arguments are its
    config.json), and it is recorded in ``families`` by class name (so a folder loads without
    naming its class: ``xswin_fast.from_pretrained``), and its module can be named as a
    component's library in a pipeline's model_index.json. Its ``__init__`` therefore names every
    argument (no ``**kwargs``, or a ``__signature__`` that names them, as USwin's). A subclass
    lists the class names of its repeated blocks in ``_repeated_blocks`` for
    ``compile_repeated_blocks()``, and in ``_no_split_modules`` the classes accelerate's
    ``device_map`` must keep whole on one device.
    Folders are verified on load and hashed on save (``verified_weights``).
    """

    families: Dict[str, type] = {}
    # diffusers' switches (enable_/disable_gradient_checkpointing) and set_grad_checkpointing set
    # this one flag, which run_block reads
    _supports_gradient_checkpointing = True
    gradient_checkpointing: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None:
            if any(p.kind is p.VAR_KEYWORD for p in inspect.signature(init).parameters.values()):
                raise TypeError(f"{cls.__name__}.__init__ must name every argument (no **kwargs): they are its config.json")
            cls.__init__ = _register_outermost(init)
        DiffusionBackbone.families[cls.__name__] = cls
        # diffusers' pipeline loader finds a component's loading method by looking its base class
        # up by name in the module that defines the component's class
        vars(sys.modules[cls.__module__]).setdefault("ModelMixin", ModelMixin)

    def set_backend(self, backend: Optional[str]) -> "DiffusionBackbone":
        """Run every op of the model on ``backend``: None (automatic), "torch" or "triton"."""
        check_backend(backend)
        for m in self.modules():
            if hasattr(m, "backend"):
                m.backend = backend
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> "DiffusionBackbone":
        """Recompute each transformer block in the backward pass instead of storing activations
        (the same switch as diffusers' ``enable_gradient_checkpointing()``)."""
        if checks.flag("enable", enable):
            self.enable_gradient_checkpointing(_checkpoint_block)
        else:
            self.disable_gradient_checkpointing()
        return self

    def run_block(self, block: nn.Module, *args):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(block, *args)
        return block(*args)

    def check_inputs(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor]) -> None:
        """Raise TypeError/ValueError naming the argument unless x is a (B >= 1, in_channels, H, W)
        floating tensor, t (B,) real timesteps >= 0 and y (B,) int64/int32 labels (None, and only
        None, for a model with ``num_classes`` 0), both on x's device. x's dtype and device are
        checked against the model's by ``conditions``.

        Values (finite t >= 0, labels in range) are checked on the CPU only: reading them back
        from an accelerator would synchronise every forward.
        """
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.numel() == 0:
            raise ValueError(f"x must hold at least one sample and a non-empty map, got shape {tuple(x.shape)}")
        B = x.shape[0]
        if not isinstance(t, torch.Tensor) or t.shape != (B,):
            raise ValueError(f"t must be a tensor of shape (B,) = ({B},), got {getattr(t, 'shape', t)}")
        if t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"t must be a real-valued tensor of timesteps, got dtype {t.dtype}")
        if self.num_classes == 0:
            if y is not None:
                raise ValueError("y must be None: the model was built with num_classes=0 (text-only, no label embedder)")
        elif not isinstance(y, torch.Tensor) or y.shape != (B,):
            raise ValueError(f"y must be a tensor of shape (B,) = ({B},), got {getattr(y, 'shape', y)}")
        for name, v in (("t", t), ("y", y)):
            if v is not None and v.device != x.device:
                raise ValueError(f"{name} must be on x's device {x.device}, got {v.device}")
        if t.device.type == "cpu" and not torch.compiler.is_compiling():
            if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
                raise ValueError(f"t must hold finite timesteps >= 0, got values in [{t.min().item()}, {t.max().item()}]")
        if y is not None:
            check_labels(y, self.num_classes, self.y_embedder.dropout_prob > 0)
        self.check_size(x.shape[-2], x.shape[-1])

    def label_embedding(self, x: torch.Tensor, y: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """``y_embedder(y)`` (B, hidden) after ``check_inputs``, with x checked against it; None for
        a model without labels (``num_classes`` 0)."""
        if self.y_embedder is None:
            return None
        return _checked_against(x, self.y_embedder(y, self.training))

    def conditions(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: Optional[torch.Tensor],
        encoder_hidden_states: Optional[torch.Tensor],
        encoder_attention_mask: Optional[torch.Tensor],
        pooled_text: Optional[torch.Tensor],
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[TextInputs]]:
        """Check every input, then embed them: (t_emb (B, c_dim), y_emb (B, c_dim) or None,
        ``TextInputs`` or None), in the model's compute dtype.

        x must be on the model's device and of its dtype (any dtype under ``torch.autocast``),
        read from the output of its label or text embedder: the embeddings come out in the dtype
        and on the device the model computes in, also under diffusers' layerwise-casting and
        offloading hooks (they act when the embedder runs), so no parameter is read outside its
        own module.
        """
        self.check_inputs(x, t, y)
        keep = check_text(self.text_dim, x.shape[0], x.device, encoder_hidden_states, encoder_attention_mask,
                          pooled_text)
        y_emb = self.label_embedding(x, y)
        text = None
        if self.text_embedder is not None:
            text = self.text_embedder(encoder_hidden_states, keep, pooled_text)
            _checked_against(x, text.pooled)
        return self.t_embedder(t, x.dtype), y_emb, text

    def example_conditions(self, batch: int, device=None, text_tokens: int = 256) -> dict:
        """Keyword inputs that condition a forward of ``batch`` (int) samples on ``device``, for
        tools that run any preset (FLOP counts, op recording): ``y`` zeros (None without labels)
        and, for a text model, zero ``encoder_hidden_states`` of ``text_tokens`` tokens (the
        papers' text context, 256), all kept."""
        y = None if self.num_classes == 0 else torch.zeros(batch, dtype=torch.long, device=device)
        if not self.text_dim:
            return {"y": y}
        return {"y": y, "encoder_hidden_states": torch.zeros(batch, text_tokens, self.text_dim, device=device)}

    def condition_vector(self, *inputs) -> Tuple[torch.Tensor, Optional[TextInputs]]:
        """``conditions(*inputs)`` summed into one vector: (t_emb + y_emb + pooled text (B, c_dim),
        ``TextInputs`` or None). The paper concatenates the pooled text with the timestep
        embedding; the adaLN projections that read this vector are linear, so the sum is the same
        function class with the existing parameters unchanged (docs/backbones.md)."""
        c, y_emb, text = self.conditions(*inputs)
        if y_emb is not None:
            c = c + y_emb
        if text is not None:
            c = c + text.pooled
        return c, text

    @staticmethod
    def _output(sample: torch.Tensor, return_dict: Optional[bool]):
        """What ``forward`` returns for ``return_dict``: None (the default) the tensor itself, as
        DiT's ``model(x, t, y)`` interface and every sampler here expect; True diffusers'
        ``Transformer2DModelOutput(sample=...)``; False the 1-tuple ``(sample,)`` that diffusers
        models return for it (so ``model(..., return_dict=False)[0]`` is the whole batch)."""
        if return_dict is None:
            return sample
        return Transformer2DModelOutput(sample=sample) if checks.flag("return_dict", return_dict) else (sample,)

    def check_size(self, H: int, W: int) -> None:
        """Raise ValueError if the model cannot run on an (H, W) latent."""

    def forward_with_cfg(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: Optional[torch.Tensor] = None,
        cfg_scale: Optional[float] = None,
        guided_channels: Optional[int] = None,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        encoder_attention_mask: Optional[torch.Tensor] = None,
        pooled_text: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Classifier-free guidance in one batched forward.

        x, t, y and the text inputs hold the conditional half followed by the unconditional half:
        null labels ``num_classes`` (checked on the CPU) and, for a text model, whatever the caller
        puts there (the null caption: mask rows that keep no token; or a negative prompt). Only the
        first half of x is used, duplicated. The guided ``eps = uncond + cfg_scale * (cond - uncond)``
        is returned for both halves. ``cfg_scale`` (float) is required. ``guided_channels``
        defaults to all ``in_channels`` eps channels (DiT guided only 3, "for exact
        reproducibility"; pass 3 to reproduce that); learned-sigma channels pass through unguided.
        """
        if isinstance(cfg_scale, bool) or not isinstance(cfg_scale, Real):
            raise TypeError(f"cfg_scale must be a float, got {cfg_scale!r}")
        if not math.isfinite(cfg_scale):
            raise ValueError(f"cfg_scale must be finite, got {cfg_scale!r}")
        if x.shape[0] % 2:
            raise ValueError(f"forward_with_cfg needs an even batch (cond + uncond halves), got {x.shape[0]}")
        n = self.in_channels if guided_channels is None else checks.integer("guided_channels", guided_channels)
        if not 0 < n <= self.in_channels:
            raise ValueError(f"guided_channels must be in [1, {self.in_channels}], got {guided_channels}")
        if isinstance(y, torch.Tensor) and self.num_classes:
            uncond = y[len(y) // 2:]
            if y.device.type == "cpu" and not torch.compiler.is_compiling() and bool((uncond != self.num_classes).any()):
                raise ValueError(
                    f"y's second half must hold the null label {self.num_classes} (the unconditional half), "
                    f"got labels {sorted(set(uncond.tolist()))} there"
                )
        half = x[: len(x) // 2]
        combined = torch.cat([half, half], dim=0)
        model_out = self(combined, t, y, encoder_hidden_states, encoder_attention_mask, pooled_text)
        eps, rest = model_out[:, :n], model_out[:, n:]
        cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
        eps = torch.cat([half_eps, half_eps], dim=0)
        return torch.cat([eps, rest], dim=1)


def _checked_against(x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """``emb`` (an embedder's output, in the model's compute dtype and on its device), after
    checking that x is on that device and of that dtype (any dtype under ``torch.autocast``)."""
    if x.device != emb.device:
        raise ValueError(f"x must be on the model's device {emb.device}, got {x.device}")
    if x.dtype != emb.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(
            f"x must have the model's dtype {emb.dtype}, got {x.dtype}: cast x, or the model with "
            f"model.to(dtype), or run under torch.autocast"
        )
    return emb
