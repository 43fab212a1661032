"""The training objectives and how a trained model is sampled.

* :mod:`.eps`: eps-prediction DDPM on diffusers' schedulers (:class:`Diffusion`, objective "eps").
* :mod:`.flow`: flow matching, the linear interpolant (:class:`FlowMatching`, objective "flow").
* :mod:`.base`: the interface both satisfy and the rebuilding of either from a checkpoint.
* :mod:`.guidance`: classifier-free guidance and its interval, shared by both samplers.
* :mod:`.sampling`: :func:`generate`, labels -> uint8 images.
"""
from .base import ALL_SAMPLERS, OBJECTIVES, Objective, objective_from_config, saved_objective_config
from .eps import PRECISIONS, SAMPLERS, Diffusion, autocast_dtype
from .flow import FLOW_SAMPLERS, T_SAMPLINGS, FlowMatching, resolution_shift, shift_time
from .guidance import Interval
from .sampling import DEFAULT_CFG_SCALE, generate

__all__ = [
    "ALL_SAMPLERS", "DEFAULT_CFG_SCALE", "Diffusion", "FLOW_SAMPLERS", "FlowMatching", "Interval", "OBJECTIVES",
    "Objective", "PRECISIONS", "SAMPLERS", "T_SAMPLINGS", "autocast_dtype", "generate", "objective_from_config",
    "resolution_shift", "saved_objective_config", "shift_time",
]
