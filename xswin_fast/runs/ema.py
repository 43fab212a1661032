"""Exponential moving average of a model's parameters *and* buffers.

DiT's ``update_ema`` averages ``named_parameters`` only, so an EMA copy of a network with
BatchNorm (XSwin's conv triplets and unpatching) keeps running_mean 0 / running_var 1 forever
and is wrong in eval mode (the original XSwin code had exactly this bug; docs/design.md, deviations). Here
floating-point buffers are averaged with the same decay as the weights (as timm's ModelEmaV2)
and integer buffers (``num_batches_tracked``) are copied.
"""
from copy import deepcopy

import torch
import torch.nn as nn


def create_ema(model: nn.Module) -> nn.Module:
    """A frozen, eval-mode deep copy of ``model``."""
    ema = deepcopy(model)
    ema.requires_grad_(False)
    ema.eval()
    return ema


def ema_decay(decay: float, step: int, warmup: bool) -> float:
    """``decay``, or with warmup ``min(decay, (1 + step) / (10 + step))`` (diffusers' EMAModel)."""
    if not warmup:
        return decay
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float = 0.9999) -> None:
    """ema = decay * ema + (1 - decay) * model, over every parameter and floating buffer."""
    ema_params = dict(ema.named_parameters())
    model_params = dict(model.named_parameters())
    if ema_params.keys() != model_params.keys():
        raise ValueError("EMA and model have different parameters")
    src = [model_params[k].detach() for k in ema_params]
    dst = list(ema_params.values())
    if decay == 0.0:
        torch._foreach_copy_(dst, src)
    else:
        torch._foreach_lerp_(dst, src, 1.0 - decay)
    ema_bufs = dict(ema.named_buffers())
    for name, buf in model.named_buffers():
        e = ema_bufs[name]
        if buf.is_floating_point() and decay != 0.0:
            e.lerp_(buf.detach(), 1.0 - decay)
        else:
            e.copy_(buf)
