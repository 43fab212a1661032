"""``Modulator``: the adaLN shift/scale that XSwin puts in front of every parameterised layer, and
``BatchedModulation``: every adaLN projection of a model in one GEMM per forward.

A model has dozens of small adaLN projections (47 modulators in the XSwin paper preset, one
6-way projection per DiT block), all of the same conditioning vector. ``BatchedModulation``
concatenates their weights and runs a single ``F.linear``, then splits the result into a
``ModulationBank`` that the model passes down in place of the conditioning tensor; each layer
takes its own slices from the bank. The parameters stay where they are (same names, shapes and
count, so checkpoints are unchanged) and the result is the same function.
"""
from typing import NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops


class ModulationBank(NamedTuple):
    """The adaLN vectors of every bound layer for one forward.

    ``cond`` is the conditioning tensor the layers would otherwise receive (used by a layer that
    is not bound to this bank), ``layers[i]`` the layer in slot i and ``chunks[i]`` its vectors.
    """

    cond: torch.Tensor
    layers: Tuple[nn.Module, ...]
    chunks: Tuple[Tuple[torch.Tensor, ...], ...]


def bank_lookup(layer: nn.Module, cond) -> Optional[Tuple[torch.Tensor, ...]]:
    """layer's precomputed vectors if ``cond`` is a bank the layer is bound to, else None."""
    if isinstance(cond, ModulationBank):
        slot = getattr(layer, "adaln_slot", None)
        if slot is not None and slot < len(cond.layers) and cond.layers[slot] is layer:
            return cond.chunks[slot]
    return None


def bank_cond(cond) -> torch.Tensor:
    """The conditioning tensor of ``cond``, a tensor or a ModulationBank."""
    return cond.cond if isinstance(cond, ModulationBank) else cond


class BatchedModulation:
    """One GEMM for every adaLN projection of a model: ``Linear(act(c))`` for all layers at once.

    Built from ``(layer, linear, chunks)`` triples: ``linear`` is the layer's own projection
    (an ``nn.Linear`` with bias, out_features divisible by ``chunks``) and each layer gets a slot.
    Calling it with the projections' input ``x`` (B, cond_dim) concatenates the weights, runs one
    ``F.linear`` and splits its output in one op: 1 GEMM and 4 autograd nodes instead of one
    GEMM, split and set of nodes per layer. The price is a copy of the projection weights per
    forward (``sum(out_features) * cond_dim`` elements: 5.8M for the XSwin presets with C=192,
    225M for DiT-XL/2; under autocast the weights are cast first, so the copy moves low-precision
    bytes). A packed parameter would avoid the copy but change the parameter names; the copy keeps
    the state dict, gradient checkpointing (the bank is computed outside the checkpointed blocks)
    and torch.compile (plain tensor ops) unchanged. Not an ``nn.Module``: the parameters stay
    registered in their layers only.
    """

    def __init__(self, entries: Sequence[Tuple[nn.Module, nn.Linear, int]]):
        self.layers = tuple(layer for layer, _, _ in entries)
        self.linears = tuple(linear for _, linear, _ in entries)
        self.chunks = tuple(int(n) for _, _, n in entries)
        for linear, n in zip(self.linears, self.chunks):
            if linear.bias is None or linear.out_features % n:
                raise ValueError(f"{linear} cannot be split into {n} adaLN vectors")
        for slot, layer in enumerate(self.layers):
            layer.adaln_slot = slot

    def __call__(self, x: torch.Tensor, cond: torch.Tensor) -> ModulationBank:
        if not self.layers:
            return ModulationBank(cond, (), ())
        weights = [linear.weight for linear in self.linears]
        device = x.device.type
        if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
            # cast before concatenating: the copy then moves half the bytes (F.linear would cast anyway)
            dtype = torch.get_autocast_dtype(device)
            weights = [w.to(dtype) for w in weights]
        weight = torch.cat(weights)
        bias = torch.cat([linear.bias for linear in self.linears])
        sizes = [linear.out_features // n for linear, n in zip(self.linears, self.chunks) for _ in range(n)]
        pieces = F.linear(x, weight, bias).split(sizes, dim=1)
        chunks, i = [], 0
        for n in self.chunks:
            chunks.append(tuple(pieces[i:i + n]))
            i += n
        return ModulationBank(cond, self.layers, tuple(chunks))


class Modulator(nn.Module):
    """x * (1 + scale(c)) + shift(c), with (shift, scale) = Linear(SiLU(c)) zero-initialised (identity).

    The model computes ``cond = SiLU(c)`` once per forward and hands it to every modulator, so
    each one is a single Linear (cond_dim -> 2*dim); ``cond`` may also be a ``ModulationBank``
    holding this modulator's (shift, scale), precomputed by the model's ``BatchedModulation``.
    ``channels_last=False`` modulates a (B, C, H, W) conv feature map; otherwise x is (B, ..., C).
    """

    backend = None
    adaln_slot: Optional[int] = None

    def __init__(self, cond_dim: int, dim: int, channels_last: bool = True):
        super().__init__()
        self.dim = dim
        self.channels_last = channels_last
        self.linear = nn.Linear(cond_dim, 2 * dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def shift_scale(self, cond) -> Tuple[torch.Tensor, torch.Tensor]:
        """(shift, scale), each (B, dim), from cond (B, cond_dim) or a ModulationBank."""
        chunks = bank_lookup(self, cond)
        if chunks is not None:
            return chunks
        shift, scale = self.linear(bank_cond(cond)).chunk(2, dim=1)
        return shift, scale

    def forward(self, x: torch.Tensor, cond) -> torch.Tensor:
        shift, scale = self.shift_scale(cond)
        if self.channels_last:
            return ops.modulate(x, shift, scale, backend=self.backend)
        y = ops.modulate(x.permute(0, 2, 3, 1), shift, scale, backend=self.backend)
        return y.permute(0, 3, 1, 2)
