"""The training objectives: eps-prediction DDPM (:class:`Diffusion`) and flow matching
(:class:`FlowMatching`), and the one function that rebuilds either from a checkpoint.

Both share one interface: ``objective``, ``num_timesteps``, ``samplers``, ``default_sampler``,
``default_steps``, ``sample_timesteps``, ``add_noise``, ``training_losses``, ``config``,
``make_sampler`` and ``sample``.
"""
from typing import Any, Dict, Union

from .eps import SAMPLERS, Diffusion
from .flow import FLOW_SAMPLERS, FlowMatching

OBJECTIVES = ("eps", "flow")
ALL_SAMPLERS = SAMPLERS + FLOW_SAMPLERS
Objective = Union[Diffusion, FlowMatching]


def objective_from_config(config: Dict[str, Any]) -> Objective:
    """A checkpoint's "diffusion" config back as its objective: a flow config holds
    ``"objective": "flow"``; an eps config (a ``DDPMScheduler`` config, as every checkpoint from
    before flow matching) holds no such key."""
    objective = config.get("objective", "eps")
    if objective == "flow":
        return FlowMatching.from_config(config)
    if objective == "eps":
        return Diffusion.from_config(config)
    raise ValueError(f"unknown objective {objective!r} in the diffusion config; expected one of {OBJECTIVES}")
