"""IU-ViT: U-ViT improved with a DWConv-FFN and a rearrange-first 3x3 conv head ("Exploring Vision
Transformers as Diffusion Learners", Cao et al., §3.2, Table 5, Appendix B.1).

    x (B, C_in, H, W) -> patch tokens + frozen 2-D sin-cos positions    (B, L, D), L = HW / p**2
      -> [time token, label token, patch tokens]                        (B, 2 + L, D)
      -> U-ViT blocks with long skips (UViT's pairing): pre-norm attention, pre-norm DWConv-FFN
      -> LayerNorm, drop the two conditioning tokens
      -> rearrange-first head: (B, L, D) -> (B, D / p**2, H, W) -> conv 3x3   (B, C_out, H, W)

U-ViT conditions through tokens, not adaLN: the time and label embeddings are prepended to the
patch tokens and stripped after the last block (Appendix B.1). ``IUViT`` is ``UViT`` with these
blocks and this head: it keeps UViT's patch embedding, embedders, position embedding, skip
pairing and size check. The readings of what the paper leaves open are in
docs/backbones.md (section "IU-ViT").
"""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import checks
from ..layers.attention import Attention
from ..layers.blocks import self_attention, text_branch
from ..layers.embed import sincos_2d
from ..layers.mlp import Mlp, mlp_hidden_dim
from ..layers.text import TextCrossAttention, zero_init_text
from .dit import UViT


class DWConvMlp(Mlp):
    """DWConv-FFN: fc1 -> depth-wise conv 3x3 over the token grid -> GELU -> fc2:
    (B, extra + g*g, dim) -> (B, extra + g*g, dim).

    The last g*g tokens are the row-major patch grid; the ``extra`` leading (conditioning)
    tokens have no position and skip the convolution.
    """

    def __init__(self, dim: int, hidden_dim: int, grid_size: int):
        super().__init__(dim, hidden_dim)
        self.grid_size = checks.integer("grid_size", grid_size)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.grid_size
        h = self.fc1(x)
        extra, grid = h[:, : h.shape[1] - g * g], h[:, h.shape[1] - g * g:]
        B, L, C = grid.shape
        grid = self.dwconv(grid.transpose(1, 2).reshape(B, C, g, g)).flatten(2).transpose(1, 2)
        return self.fc2(self.act(torch.cat([extra, grid], dim=1)))


class IUViTBlock(nn.Module):
    """U-ViT block with a DWConv-FFN, optionally fusing a long skip first:
    x, skip (B, L, D) -> (B, L, D).

        x = skip_linear(cat[x, skip])            (decoder blocks only)
        x = x + attn(LN(x));  x = x + dwconv_ffn(LN(x))

    ``c`` is accepted and ignored: IU-ViT's conditioning is in its tokens, and UViT's block loop
    passes one to every block. With ``text_width`` > 0 the text context (B, L_text, text_width)
    and its mask keep (B, L_text) bool or None enter as in ``DiTBlock`` (Figure 8's MHCA after
    the MHSA for "separate", GLIDE's fused attention for "fused").
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, grid_size: int, skip: bool = False,
                 text_width: int = 0, text_fusion: str = "separate"):
        super().__init__()
        fused = text_width if text_fusion == "fused" else 0
        self.skip_linear = nn.Linear(2 * hidden_size, hidden_size) if checks.flag("skip", skip) else None
        self.norm1 = nn.LayerNorm(hidden_size)
        self.attn = Attention(hidden_size, num_heads, qkv_bias=False, context_dim=fused)
        if text_width and not fused:
            self.cross_attn = TextCrossAttention(hidden_size, num_heads, text_width, eps=1e-5)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.mlp = DWConvMlp(hidden_size, mlp_hidden_dim(hidden_size, mlp_ratio), grid_size)

    def forward(
        self, x: torch.Tensor, c: Optional[torch.Tensor] = None, skip: Optional[torch.Tensor] = None,
        context: Optional[torch.Tensor] = None, keep: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self_attention(self, self.norm1(x), context, keep)
        x = text_branch(self, x, context, keep)
        return x + self.mlp(self.norm2(x))


class RearrangeFirstHead(nn.Module):
    """LayerNorm, then the tokens rearranged to the image grid before any projection, then a 3x3
    conv: (B, g*g, D) -> (B, D / p**2, g*p, g*p) -> (B, C_out, g*p, g*p).

    Each token's D features become its p x p pixels with D / p**2 channels
    (``F.pixel_shuffle``'s layout: feature c * p**2 + i * p + j is channel c at pixel (i, j)).
    """

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        checks.divisible("hidden_size", hidden_size, "patch_size ** 2", patch_size**2)
        self.patch_size = patch_size
        self.norm = nn.LayerNorm(hidden_size)
        self.conv = nn.Conv2d(hidden_size // patch_size**2, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, grid_size: int) -> torch.Tensor:
        x = self.norm(x)
        B, L, D = x.shape
        x = x.transpose(1, 2).reshape(B, D, grid_size, grid_size)
        return self.conv(F.pixel_shuffle(x, self.patch_size))


class IUViT(UViT):
    """Improved U-ViT: ``model(x, t, y)`` -> (B, out_channels, input_size, input_size).

    Args as ``UViT``'s (input_size, patch_size, in_channels, hidden_size, depth, num_heads,
    mlp_ratio, class_dropout_prob, num_classes, learn_sigma, text_dim, text_width, text_fusion);
    ``hidden_size`` must be divisible by 4 and by ``patch_size ** 2`` (the head's rearrangement).
    Defaults are the paper's CIFAR-10 column: 32 px, 3 channels, patch 2, 13 blocks of width 512
    with 8 heads, unconditional (``num_classes=1``), no learned sigma. A text model's pooled
    text is one more conditioning token after the time (and label) token.
    """

    _repeated_blocks = ["IUViTBlock"]
    _no_split_modules = ["IUViTBlock", "PatchEmbed", "RearrangeFirstHead", "TimestepEmbedder", "LabelEmbedder", "TextEmbedder"]

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 3,
        hidden_size: int = 512,
        depth: int = 13,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1,
        learn_sigma: bool = False,
        text_dim: int = 0,
        text_width: Optional[int] = None,
        text_fusion: str = "separate",
    ):
        super().__init__(
            input_size=input_size, patch_size=patch_size, in_channels=in_channels, hidden_size=hidden_size,
            depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, class_dropout_prob=class_dropout_prob,
            num_classes=num_classes, learn_sigma=learn_sigma, text_dim=text_dim, text_width=text_width,
            text_fusion=text_fusion,
        )

    def _make_blocks(
        self, depth: int, hidden_size: int, num_heads: int, mlp_ratio: float, mlp_norm_eps: float,
        text_width: int, text_fusion: str,
    ) -> List[nn.Module]:
        self.encoders_n, self.decoders_n = self.skip_pairing(depth)
        return [
            IUViTBlock(hidden_size, num_heads, mlp_ratio, self.grid_size, skip=i > self.decoders_n,
                       text_width=text_width, text_fusion=text_fusion)
            for i in range(depth)
        ]

    def _make_final_layer(self, hidden_size: int, patch_size: int, out_channels: int) -> nn.Module:
        return RearrangeFirstHead(hidden_size, patch_size, out_channels)

    def initialize_weights(self) -> None:
        """U-ViT's initialisation: truncated-normal(0.02) Linears with zero bias (LayerNorms and
        convs keep PyTorch's); the frozen sin-cos position embedding and DiT's embedder
        initialisation."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.pos_embed.data.copy_(sincos_2d(self.hidden_size, self.grid_size, self.grid_size).unsqueeze(0))
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        zero_init_text(self)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: Optional[torch.Tensor] = None,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        encoder_attention_mask: Optional[torch.Tensor] = None,
        pooled_text: Optional[torch.Tensor] = None,
        return_dict: Optional[bool] = None,
    ):
        """x (B, C_in, H, W), t (B,), y (B,) or None, text inputs (``layers.text.check_text``)
        -> (B, C_out, H, W)."""
        t_emb, y_emb, text = self.conditions(x, t, y, encoder_hidden_states, encoder_attention_mask, pooled_text)
        tokens = [e[:, None] for e in (t_emb, y_emb, None if text is None else text.pooled) if e is not None]
        x = self.x_embedder(x) + self.pos_embed  # (B, L, D)
        h = torch.cat([*tokens, x], dim=1)  # (B, len(tokens) + L, D)
        h = self._run_blocks(h, None, text)
        return self._output(self.final_layer(h[:, len(tokens):], self.grid_size), return_dict)


# Table 5's CIFAR-10 and CelebA 64x64 columns (both 45M): 13 blocks, width 512, 8 heads, patch 2
# and 4; unconditional pixel-space models (train.py overrides input_size, in_channels, num_classes)
# Table 5's CC12M 64x64 column: the text-to-image model on T5-XXL encodings (4096 wide), projected
# to the table's "text encoder width" 1024; text-only (no labels), 313.0M parameters against the
# paper's 307M without the text encoder (docs/backbones.md)
IUVIT_PRESETS: Dict[str, Tuple[type, dict]] = {
    "IUViT-CIFAR10": (IUViT, dict(input_size=32, patch_size=2, hidden_size=512, depth=13, num_heads=8)),
    "IUViT-CelebA64": (IUViT, dict(input_size=64, patch_size=4, hidden_size=512, depth=13, num_heads=8)),
    "IUViT-T2I-CC12M64": (IUViT, dict(input_size=64, patch_size=4, hidden_size=1024, depth=17, num_heads=16,
                                      num_classes=0, text_dim=4096, text_width=1024)),
}
