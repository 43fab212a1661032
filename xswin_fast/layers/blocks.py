"""Transformer blocks of XSwin (the modulated SwinV2 block and the modulated ViT bottleneck block) and
the two text steps every family's blocks share: the (possibly fused) self-attention call and the
separate MHCA branch."""
from typing import Optional, Tuple

import torch
import torch.nn as nn

from . import checks
from .adaln import ModulatedLayerNorm, Modulator, ResidualLayerNorm
from .attention import Attention, WindowAttention
from .mlp import Mlp, mlp_hidden_dim
from .text import TextCrossAttention


def self_attention(block: nn.Module, h: torch.Tensor, context: Optional[torch.Tensor],
                   keep: Optional[torch.Tensor]) -> torch.Tensor:
    """``block.attn(h)``, given the text context and its mask when the block's ``Attention`` fuses
    them (GLIDE's fused attention, ``text_fusion="fused"``)."""
    if hasattr(block.attn, "text_kv"):
        return block.attn(h, context, keep)
    return block.attn(h)


def text_branch(block: nn.Module, x: torch.Tensor, context: Optional[torch.Tensor], keep: Optional[torch.Tensor],
                drop_path: float = 0.0) -> torch.Tensor:
    """``x + DropPath(block.cross_attn(x, context, keep))`` for a block with the separate MHCA
    sub-block, else x (drawing no random number: a class-only model's stochastic depth stays as
    it was). x (B, ..., C), context (B, L, text_width), keep (B, L) bool or None."""
    if not hasattr(block, "cross_attn"):
        return x
    branch = block.cross_attn(x, context, keep)
    drop = drop_path_keep(x, drop_path, block.training)
    if drop is not None:
        branch = branch * drop.view(-1, *[1] * (branch.dim() - 1))
    return x + branch


def drop_path_keep(x: torch.Tensor, p: float, training: bool) -> Optional[torch.Tensor]:
    """Per-sample stochastic-depth multiplier (B,): 0 for a dropped branch, 1/(1-p) for a kept one."""
    if not training or p == 0.0:
        return None
    keep = torch.empty(x.shape[0], device=x.device, dtype=x.dtype).bernoulli_(1.0 - p)
    return keep.div_(1.0 - p)


class SwinBlock(nn.Module):
    """Modulated SwinV2 block (res-post-norm): (B, H, W, C) -> (B, H, W, C).

        x = x + DropPath(LN(attn(mod1(x))))
        x = x + DropPath(cross_attn(x, context))      (text models only: the MHCA sub-block)
        x = x + DropPath(LN(mlp(mod2(x))))

    The adaLN shift/scale acts on the block input and there is no gate (the X-Swin design). With
    ``text_width`` > 0 the block reads the text context (B, L_text, text_width) and its mask
    keep (B, L_text) bool or None; every image token of the map attends to the whole caption
    (the MHCA is global over the text, not windowed).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: Tuple[int, int],
        shift_size: Tuple[int, int],
        c_dim: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        eps: float = 1e-5,
        text_width: int = 0,
    ):
        super().__init__()
        self.drop_path = checks.probability("drop_path", drop_path, below_one=True)
        eps = checks.positive_float("eps", eps)
        self.mod1 = Modulator(c_dim, dim)
        self.attn = WindowAttention(dim, num_heads, window_size, shift_size)
        self.norm1 = ResidualLayerNorm(dim, eps=eps)
        if checks.integer("text_width", text_width, minimum=0):
            self.cross_attn = TextCrossAttention(dim, num_heads, text_width, eps=eps)
        self.mod2 = Modulator(c_dim, dim)
        self.mlp = Mlp(dim, mlp_hidden_dim(dim, mlp_ratio))
        self.norm2 = ResidualLayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, silu_c: torch.Tensor, context: Optional[torch.Tensor] = None,
                keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        a = self.attn(self.mod1(x, silu_c))
        x = self.norm1(x, a, drop_path_keep(x, self.drop_path, self.training))
        x = text_branch(self, x, context, keep, self.drop_path)
        m = self.mlp(self.mod2(x, silu_c))
        return self.norm2(x, m, drop_path_keep(x, self.drop_path, self.training))


class ViTBlock(nn.Module):
    """Modulated ViT block of the global bottleneck: (B, L, C) -> (B, L, C).

        x = x + attn(LN(mod1(x)))
        x = x + cross_attn(x, context)                 (text models only: the MHCA sub-block)
        x = x + mlp(LN(mod2(x)))

    Modulation comes before the LayerNorm (the reverse of DiT's order), as in the original. The
    norms were once named ``ln_1``/``ln_2``; checkpoints with those keys still load. ``text_width``,
    context and keep as ``SwinBlock``'s.
    """

    def __init__(self, dim: int, num_heads: int, c_dim: int, mlp_ratio: float = 4.0, eps: float = 1e-5,
                 text_width: int = 0):
        super().__init__()
        eps = checks.positive_float("eps", eps)
        self.mod1 = Modulator(c_dim, dim)
        self.norm1 = ModulatedLayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        if checks.integer("text_width", text_width, minimum=0):
            self.cross_attn = TextCrossAttention(dim, num_heads, text_width, eps=eps)
        self.mod2 = Modulator(c_dim, dim)
        self.norm2 = ModulatedLayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_hidden_dim(dim, mlp_ratio))
        self.register_load_state_dict_pre_hook(_rename_legacy_norms)

    def forward(self, x: torch.Tensor, silu_c: torch.Tensor, context: Optional[torch.Tensor] = None,
                keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x, *self.mod1.shift_scale(silu_c)))
        x = text_branch(self, x, context, keep)
        return x + self.mlp(self.norm2(x, *self.mod2.shift_scale(silu_c)))


def _rename_legacy_norms(module, state_dict, prefix, *args) -> None:
    """load_state_dict pre-hook of ViTBlock: map the old keys ``ln_1.*``/``ln_2.*`` to ``norm1.*``/``norm2.*``."""
    for old, new in (("ln_1.", "norm1."), ("ln_2.", "norm2.")):
        for key in [k for k in state_dict if k.startswith(prefix + old)]:
            state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)
