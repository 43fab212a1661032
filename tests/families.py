"""One spec per backbone family (a class the registry builds): what the family-wide tests (the
backbone contract, the preset builds, the CLI runs) need to know of it. ``FAMILIES`` comes from
the registry, so a new family is in every family-wide test at once, and each of them fails,
naming it, until its ``FamilySpec`` is added to ``SPECS`` here.
"""
import json
from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import torch.nn as nn

from xswin_fast import DiT, USwin, UViT, XSwin
from xswin_fast.layers.adaln import Modulator
from xswin_fast.layers.blocks import SwinBlock, ViTBlock
from xswin_fast.layers.tmsa import TMSA
from xswin_fast.models import ASCEND, DiffiT, IUViT, LatentDiffiT
from xswin_fast.models.dit import DiTBlock, FinalLayer
from xswin_fast.models.registry import PRESETS


@dataclass(frozen=True)
class FamilySpec:
    """tiny: constructor keyword arguments of the smallest model that exercises every path of the
    family, on 8x8 inputs with 4 channels and 10 classes.
    patch_sizes: the patch sizes the contract runs the tiny model at; () for a family without a
    ``patch_size`` argument (it convolves the full-resolution map).
    conditioning: (module class, submodule path) of every Linear that projects the conditioning
    vector (the adaLN sites; DiffiT's time-token projections); () where it enters as tokens.
    adaln_ops: model -> {adaLN op name: calls per forward} of ``xswin_fast.ops``' fused adaLN ops.
    calls_ops: whether any module of the family runs an op of ``xswin_fast.ops`` (has a backend).
    cli_preset, cli_model_kwargs: a preset of the family and the ``--model-kwargs`` (JSON) that
    shrink it for a train.py run of a few seconds on the digits.
    """

    tiny: dict
    patch_sizes: Tuple[int, ...]
    conditioning: Tuple[Tuple[type, str], ...]
    adaln_ops: Callable[[nn.Module], Dict[str, int]]
    cli_preset: str
    cli_model_kwargs: str
    calls_ops: bool = True

    def conditioning_projections(self, model: nn.Module) -> list:
        """The Linear modules named by ``conditioning``, in module order."""
        return [m.get_submodule(path) for m in model.modules()
                for kind, path in self.conditioning if isinstance(m, kind)]


# The smallest configurations that exercise every path of each family: two stages with a shifted
# block, padding, cross-attention skips, a ViT bottleneck (XSwin/USwin; 8x8 latents); three
# blocks with one UViT skip pair (DiT/UViT/IUViT; 8x8 latents, patch 2); three stages with a
# width change, several windows, one window and a clamped window, and a two-block decoder stage
# (DiffiT); two blocks of global TMSA (LatentDiffiT, patch 2); two levels with residual
# down/upsampling, shifted Swin pairs on the lower level and in the middle (ASCEND).
XSWIN_TINY = dict(input_size=8, patch_size=1, embed_dim=32, depths=(1, 2), num_heads=(2, 4), window_size=2,
                  bottleneck_depth=1, num_classes=10)
DIT_TINY = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=3, num_heads=4, num_classes=10)
DIFFIT_TINY = dict(input_size=8, in_channels=4, channels=(16, 32, 32), depths=(1, 1, 2), num_heads=(2, 2, 4),
                   window_size=4, time_dim=32, num_classes=10, learn_sigma=True)
LATENT_DIFFIT_TINY = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4,
                          num_classes=10)
IUVIT_TINY = dict(DIT_TINY, learn_sigma=True)
ASCEND_TINY = dict(input_size=8, in_channels=4, channels=32, channel_mult=(1, 2), depth=1, attention_downsample=(2,),
                   head_channels=16, window_size=2, dropout=0.0, num_classes=10, learn_sigma=True)

# train.py --model-kwargs of the tiny XSwin-digits that the training, sampling and evaluation tests train
TINY_DIGITS = json.dumps({"embed_dim": 16, "depths": [1, 1], "num_heads": [1, 1], "bottleneck_depth": 1})
_TINY_VIT_CLI = json.dumps({"hidden_size": 32, "depth": 3, "num_heads": 2})


def _modulator_ops(model: nn.Module) -> Dict[str, int]:
    """XSwin's and ASCEND's adaLN: a ViT block modulates its two LayerNorms fused, a Swin block
    adds two post-norm residuals; every other modulator is a plain modulate."""
    n_vit = sum(isinstance(m, ViTBlock) for m in model.modules())
    n_mod = sum(isinstance(m, Modulator) for m in model.modules())
    n_swin = sum(isinstance(m, SwinBlock) for m in model.modules())
    sites = {"modulate": n_mod - 2 * n_vit, "modulate_layernorm": 2 * n_vit, "residual_layernorm": 2 * n_swin}
    return {op: n for op, n in sites.items() if n}


def _dit_ops(model: nn.Module) -> Dict[str, int]:
    """DiT's adaLN-Zero: two modulated LayerNorms and two gated residuals a block, one final modulation."""
    return {"layernorm_modulate": 2 * len(model.blocks) + 1, "gated_residual": 2 * len(model.blocks)}


def _no_adaln(model: nn.Module) -> Dict[str, int]:
    return {}


_MODULATORS = ((Modulator, "linear"),)
_DIT_ADALN = ((DiTBlock, "adaLN_modulation.1"), (FinalLayer, "adaLN_modulation.1"))
# DiffiT conditions through the time-token projection of every TMSA, not adaLN
_TMSA_TIME = ((TMSA, "qkv_time"),)
_PATCHES = (1, 2, 4)

SPECS: Dict[type, FamilySpec] = {
    XSwin: FamilySpec(XSWIN_TINY, _PATCHES, _MODULATORS, _modulator_ops, "XSwin-digits", TINY_DIGITS),
    USwin: FamilySpec(XSWIN_TINY, _PATCHES, _MODULATORS, _modulator_ops, "USwin-digits", TINY_DIGITS),
    DiT: FamilySpec(DIT_TINY, _PATCHES, _DIT_ADALN, _dit_ops, "DiT-digits", _TINY_VIT_CLI),
    UViT: FamilySpec(DIT_TINY, _PATCHES, _DIT_ADALN, _dit_ops, "UViT-digits", _TINY_VIT_CLI),
    DiffiT: FamilySpec(DIFFIT_TINY, (), _TMSA_TIME, _no_adaln, "DiffiT-CIFAR10",
                       json.dumps({"channels": [16, 16, 16], "num_heads": [1, 1, 1], "time_dim": 32})),
    LatentDiffiT: FamilySpec(LATENT_DIFFIT_TINY, _PATCHES, _TMSA_TIME, _no_adaln, "DiffiT-latent-XL/2",
                             json.dumps({"hidden_size": 32, "depth": 2, "num_heads": 2})),
    ASCEND: FamilySpec(ASCEND_TINY, (), _MODULATORS, _modulator_ops, "ASCEND-32",
                       json.dumps({"channels": 32, "channel_mult": [1, 2], "depth": 1, "attention_downsample": [2],
                                   "head_channels": 16, "window_size": 2})),
    # IUViT conditions through tokens and calls no op of xswin_fast.ops (no adaLN, no window attention)
    IUViT: FamilySpec(IUVIT_TINY, _PATCHES, (), _no_adaln, "IUViT-CIFAR10", _TINY_VIT_CLI, calls_ops=False),
}
# the classes the registry builds, in its order
FAMILIES = list(dict.fromkeys(cls for cls, _ in PRESETS.values()))


def spec(cls: type) -> FamilySpec:
    """``SPECS[cls]``, or a LookupError that says what to add."""
    if cls not in SPECS:
        raise LookupError(f"{cls.__name__} has no FamilySpec: add one to SPECS in tests/families.py")
    return SPECS[cls]


def tiny(cls: type, **overrides):
    """A tiny ``cls`` (its spec's ``tiny`` with ``overrides``) on the torch backend (fast under
    TRITON_INTERPRET=1)."""
    return cls(**{**spec(cls).tiny, **overrides}).set_backend("torch")
