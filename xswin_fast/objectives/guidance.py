"""Classifier-free guidance with an optional guidance interval, shared by every objective's sampler.

Guidance is applied only at the noise levels inside ``interval = (lo, hi)`` (Kynkäänniemi et al.
2024, "Applying guidance in a limited interval"); elsewhere the model runs once, conditionally,
on the undoubled batch. A noise level is the model's timestep divided by the number of training
timesteps, in [0, 1] for both objectives: ``t / T`` for an eps model's integer step t of T (999 of
1000 -> 0.999), the interpolation time t itself for a flow model (1 = pure noise, 0 = data).
"""
import math
from typing import Optional, Tuple

import torch

Interval = Optional[Tuple[float, float]]


def check_guidance(model, cfg_scale: float, interval: Interval) -> None:
    """ValueError for a guidance that cannot run: a non-finite ``cfg_scale``, guidance of a model
    without a null class, or an ``interval`` that is not (lo, hi) with 0 <= lo <= hi <= 1."""
    if not math.isfinite(cfg_scale):
        raise ValueError(f"cfg_scale must be a finite number, got {cfg_scale}")
    if cfg_scale != 1.0 and getattr(getattr(model, "y_embedder", None), "dropout_prob", 0) <= 0:
        raise ValueError("classifier-free guidance needs a model trained with class dropout (a null class)")
    if interval is not None:
        if len(interval) != 2 or not all(math.isfinite(v) for v in interval) or not 0 <= interval[0] <= interval[1] <= 1:
            raise ValueError(f"cfg_interval must be (lo, hi) with 0 <= lo <= hi <= 1, got {tuple(interval)}")


def guided_at(level: float, cfg_scale: float, interval: Interval) -> bool:
    """Whether the step at noise ``level`` (in [0, 1]) is guided: ``cfg_scale != 1`` and ``level``
    inside the closed ``interval`` (None: every level)."""
    return cfg_scale != 1.0 and (interval is None or interval[0] <= level <= interval[1])


def model_output(model, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, cfg_scale: float, guided: bool) -> torch.Tensor:
    """The model's output (B, out_channels, H, W) for x (B, C, H, W), timesteps t (B,) and integer
    labels (B,): guided with ``cfg_scale`` through ``model.forward_with_cfg`` (the batch doubled
    with the null label ``model.num_classes``) when ``guided``, a plain conditional call otherwise."""
    if not guided:
        return model(x, t, labels)
    null = torch.full_like(labels, model.num_classes)
    out = model.forward_with_cfg(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]), cfg_scale)
    return out[: x.shape[0]]
