"""``DiTPipelineTransformer``: any backbone as the ``transformer`` of diffusers' own ``DiTPipeline``.

``DiTPipeline`` calls ``transformer(latents, timestep=t, class_labels=y).sample`` and reads
``transformer.config.sample_size``, ``in_channels`` and ``out_channels``; this adapter answers
those and saves as a diffusers model folder (the backbone's class name and config, and its
weights under ``backbone.``). ``DiTPipeline``'s own limits hold: its null class is fixed at 1000
(guidance needs ``num_classes=1000``), its latents are square at ``sample_size``, it requires a
VAE, and it guides the first ``in_channels`` output channels (diffusers before 0.30 guided 3).
"""
from typing import Any, Dict, Optional

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin

from ..models.base import DiffusionBackbone
from ..models.pretrained import backbone_class as backbone_class_of
from ..models.verified_weights import VerifiedWeights


class DiTPipelineTransformer(VerifiedWeights, ModelMixin, ConfigMixin):
    """Wraps a backbone for ``DiTPipeline(transformer=..., vae=..., scheduler=...)``.

    Args:
        backbone_class (str): the backbone's class name ("XSwin", "DiT", ...).
        backbone_config (Dict[str, Any]): its constructor arguments (``dict(model.config)``).
        sample_size, in_channels, out_channels (int, Optional): what DiTPipeline reads; derived
            from the backbone (``input_size``, ``in_channels``, ``out_channels``) and checked
            against it when given.

    Build one from a model with ``DiTPipelineTransformer.from_backbone(model)``. Its folders are
    hashed and verified as a backbone's (``xswin_fast.models.verified_weights``).
    """

    # diffusers' enable_gradient_checkpointing() sets the flag of every submodule that has one: the
    # backbone's, which its run_block reads
    _supports_gradient_checkpointing = True
    # device_map collects the backbone's own _no_split_modules from it as a child model
    _no_split_modules = []

    @property
    def _repeated_blocks(self):
        """The backbone's repeated block classes, for ``compile_repeated_blocks()``."""
        return self.backbone._repeated_blocks

    @register_to_config
    def __init__(
        self,
        backbone_class: str,
        backbone_config: Dict[str, Any],
        sample_size: Optional[int] = None,
        in_channels: Optional[int] = None,
        out_channels: Optional[int] = None,
    ):
        super().__init__()
        config = {k: v for k, v in backbone_config.items() if not k.startswith("_")}
        self.backbone = backbone_class_of(backbone_class)(**config)
        derived = dict(
            sample_size=self.backbone.input_size, in_channels=self.backbone.in_channels,
            out_channels=self.backbone.out_channels,
        )
        for name, given in (("sample_size", sample_size), ("in_channels", in_channels), ("out_channels", out_channels)):
            if given is not None and given != derived[name]:
                raise ValueError(f"{name}={given} does not match the backbone's {derived[name]}")
        self.register_to_config(**derived)

    @classmethod
    def from_backbone(cls, model: DiffusionBackbone) -> "DiTPipelineTransformer":
        """The adapter around ``model`` itself (its weights are shared, not copied)."""
        if not isinstance(model, DiffusionBackbone):
            raise TypeError(f"model must be a DiffusionBackbone, got {type(model).__name__}")
        with torch.device("meta"):
            adapter = cls(type(model).__name__, {k: v for k, v in model.config.items() if not k.startswith("_")})
        adapter.backbone = model
        return adapter

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, class_labels: torch.Tensor, return_dict: bool = True):
        """hidden_states (B, in_channels, S, S), timestep (B,), class_labels (B,) ->
        ``Transformer2DModelOutput(sample=(B, out_channels, S, S))``."""
        out = self.backbone(hidden_states, timestep, class_labels)
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)
