"""The objective interface: what every training objective provides to the trainer, the samplers
and a checkpoint, and the rebuilding of either objective from a checkpoint.

:class:`Objective` is a ``typing.Protocol``: eps-prediction DDPM (:class:`~.eps.Diffusion`) and
flow matching (:class:`~.flow.FlowMatching`) satisfy it structurally (tests/test_objectives.py
checks every member and its signature).
"""
from typing import Any, Callable, Dict, Optional, Protocol, Sequence, Tuple, runtime_checkable

import torch

from ..checkpoints import CheckpointError
from .eps import SAMPLERS, Diffusion
from .flow import FLOW_SAMPLERS, FlowMatching
from .guidance import Interval

OBJECTIVES = ("eps", "flow")
ALL_SAMPLERS = SAMPLERS + FLOW_SAMPLERS


@runtime_checkable
class Objective(Protocol):
    """A training objective: noise schedule (or interpolant), per-sample losses and samplers.

    ``name`` is "eps" or "flow"; ``num_timesteps`` T scales the model's timesteps (eps: integer
    steps 0..T-1; flow: t * T, a float); ``learn_sigma`` says whether the loss reads a second set
    of C output channels; ``samplers`` names the samplers, ``default_sampler`` /
    ``default_steps`` the ones ``generate`` uses when none is given.
    """

    name: str
    num_timesteps: int
    learn_sigma: bool
    samplers: Tuple[str, ...]
    default_sampler: str
    default_steps: int

    def config(self) -> Dict[str, Any]:
        """Plain data that :meth:`from_config` (and :func:`objective_from_config`) rebuild it from."""

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "Objective":
        """The inverse of :meth:`config`."""

    def sample_timesteps(self, n: int, device) -> torch.Tensor:
        """(n,) training timesteps in model units on ``device``."""

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t for clean ``x0`` (B, C, H, W), ``noise`` of its shape and timesteps ``t`` (B,)."""

    def training_losses(self, model_output: torch.Tensor, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                        noise: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Per-sample losses {"loss", "mse", "vb"}, each (B,) float32."""

    def make_sampler(self, name: str, steps: int):
        """A diffusers scheduler of sampler ``name`` set to ``steps`` steps."""

    def sample(self, model, labels: torch.Tensor, shape: Sequence[int], *, sampler: str, steps: int,
               cfg_scale: float = 1.0, cfg_interval: Interval = None, generator: Optional[torch.Generator] = None,
               autocast_dtype: Optional[torch.dtype] = None, on_step: Optional[Callable[[], Any]] = None) -> torch.Tensor:
        """``len(labels)`` samples of ``shape`` (C, H, W) from ``model`` (float32, on its device)."""


def objective_from_config(config: Dict[str, Any]) -> Objective:
    """An objective back from its :meth:`Objective.config`: a flow config holds
    ``"objective": "flow"``; an eps config (a ``DDPMScheduler`` config, as every checkpoint from
    before flow matching) holds no such key."""
    name = config.get("objective", "eps")
    if name == "flow":
        return FlowMatching.from_config(config)
    if name == "eps":
        return Diffusion.from_config(config)
    raise ValueError(f"unknown objective {name!r} in the objective config; expected one of {OBJECTIVES}")


def saved_objective_config(checkpoint: Dict[str, Any]) -> Dict[str, Any]:
    """The objective config a train.py checkpoint holds: its "objective" entry, or in a checkpoint
    of format ``xswin_fast.train/1`` (where "objective" held only the name) its "diffusion"
    entry. CheckpointError when it holds neither."""
    saved = checkpoint.get("objective")
    if isinstance(saved, dict):
        return saved
    if isinstance(checkpoint.get("diffusion"), dict):
        return checkpoint["diffusion"]
    raise CheckpointError("not a train.py checkpoint (no objective config)")
