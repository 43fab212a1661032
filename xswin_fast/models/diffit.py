"""DiffiT (Hatamizadeh et al., ECCV 2024): diffusion backbones built on time-dependent
self-attention (TMSA, ``layers/tmsa.py``) instead of adaLN.

``DiffiT`` is the image-space U-Net of the paper's Fig. 4 and appendix H.1:

    images (B, C_in, H, W)
      -> tokenizer Conv3x3                      (B, C_0, H, W)
      -> encoder stage i: DiffiT ResBlocks      (B, C_i, H/2^i, W/2^i), kept as the skip;
         a stride-2 Conv3x3 between stages
      -> decoder stage i (i = n-2 .. 0): nearest upsampling to the skip's size + Conv3x3,
         concat with the skip, DiffiT ResBlocks (the first maps C_{i+1} + C_i -> C_i)
      -> head GroupNorm -> SiLU -> Conv3x3     (B, C_out, H, W)

with the ResBlock ``x + DiffiTBlock(Conv3x3(SiLU(GN(x))), x_t)`` (Eqs. 9-10; a 1x1 conv on the
shortcut where the channels change) and window TMSA without shift. ``LatentDiffiT`` is the
isotropic latent model of Fig. 3: patches, DiffiT blocks with global TMSA (the window is the
token grid), LayerNorm and a linear decoder. The time token is the timestep's sinusoidal
embedding through an MLP with SiLU (swish), plus the class embedding. The readings of what the
paper leaves open are in docs/backbones.md ("DiffiT").
"""
import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import checks
from ..layers.embed import LabelEmbedder, TimestepEmbedder, sincos_2d
from ..layers.text import TextEmbedder, text_settings, zero_init_text
from ..layers.tmsa import DiffiTBlock
from .base import DiffusionBackbone
from .dit import PatchEmbed

__all__ = ["DiffiTResBlock", "DiffiT", "LatentDiffiT", "DIFFIT_PRESETS"]


def _group_norm(channels: int) -> nn.GroupNorm:
    # 32 groups (ADM/EDM), fewer where the width is not a multiple of 32 (tiny test models)
    return nn.GroupNorm(math.gcd(32, channels), channels)


def _stage_sequence(name: str, value, n: int = None) -> Tuple[int, ...]:
    """A non-empty sequence of ints >= 1, one per stage (``n`` of them when given), as a tuple."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) == 0:
        raise TypeError(f"{name} must be a non-empty sequence of ints, one per stage, got {value!r}")
    if n is not None and len(value) != n:
        raise ValueError(f"{name} must have one entry per stage ({n}), got {len(value)}: {value!r}")
    return tuple(checks.integer(f"{name}[{i}]", v) for i, v in enumerate(value))


class DiffiTResBlock(nn.Module):
    """DiffiT ResBlock (Eqs. 9-10): (B, C_in, H, W), time token (B, time_dim) -> (B, C_out, H, W).

    ``h = Conv3x3(SiLU(GroupNorm(x)))``, then ``DiffiTBlock(h, x_t) + shortcut(x)``; the shortcut
    is the identity, or a 1x1 conv where C_in != C_out (the first block of a stage that changes
    width, and of every decoder stage, whose input is concatenated with the skip).
    """

    def __init__(self, in_channels: int, out_channels: int, time_dim: int, num_heads: int, window_size,
                 mlp_ratio: float, text_width: int = 0):
        super().__init__()
        self.norm = _group_norm(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.block = DiffiTBlock(out_channels, time_dim, num_heads, window_size, mlp_ratio, text_width)
        self.shortcut = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, time_token: torch.Tensor, context: Optional[torch.Tensor] = None,
                keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.conv(F.silu(self.norm(x))).permute(0, 2, 3, 1)  # (B, H, W, C_out): tokens
        h = self.block(h, time_token, context, keep).permute(0, 3, 1, 2)
        return h + self.shortcut(x)


class Upsample(nn.Module):
    """Nearest upsampling to a target size, then Conv3x3: (B, C, h, w) -> (B, C, H, W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        # the skip's size, not 2x: an odd map was downsampled to ceil(H / 2)
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class DiffiT(DiffusionBackbone):
    """Image-space DiffiT U-Net: ``model(x, t, y)`` -> (B, out_channels, H, W), at any H, W >= 1.

    Args:
        input_size (int): nominal image size (metadata; the model runs at any size). Default: 32.
        in_channels (int): image channels. Default: 3.
        channels (Sequence[int]): width of each stage. Default: (128, 256, 256).
        depths (Sequence[int]): DiffiT ResBlocks per stage, encoder and decoder. Default: (2, 2, 2).
        num_heads (Sequence[int]): TMSA heads per stage. Default: (4, 8, 8).
        window_size (int or (int, int)): TMSA window, clamped to each map. Default: 4.
        mlp_ratio (float): MLP width / block width. Default: 4.
        time_dim (int): width of the time token. Default: 512.
        class_dropout_prob (float): label dropout for classifier-free guidance. Default: 0.1.
        num_classes (int): classes (1: unconditional); label ``num_classes`` is the null class.
        learn_sigma (bool): output 2 * in_channels (eps and variance). Default: False (EDM).
        text_dim (int): width of the text encoder's outputs; 0 (default) builds the class-only
            model. With text, ``model(x, t, y, encoder_hidden_states, encoder_attention_mask,
            pooled_text)``: the pooled text is added to the time token and every DiffiT block
            (the windowed stages, encoder and decoder) has the separate MHCA sub-block.
        text_width (int, Optional): width of the projected text sequence. Default: time_dim.
        text_fusion (str): "separate" only; "fused" (GLIDE) is refused: TMSA attends within windows.
        num_classes may be 0 with text (a text-only model; y must be None).
    """

    _repeated_blocks = ["DiffiTResBlock"]
    _no_split_modules = ["DiffiTResBlock", "Upsample", "TimestepEmbedder", "LabelEmbedder", "TextEmbedder"]

    def __init__(
        self,
        input_size: int = 32,
        in_channels: int = 3,
        channels: Sequence[int] = (128, 256, 256),
        depths: Sequence[int] = (2, 2, 2),
        num_heads: Sequence[int] = (4, 8, 8),
        window_size=4,
        mlp_ratio: float = 4.0,
        time_dim: int = 512,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1,
        learn_sigma: bool = False,
        text_dim: int = 0,
        text_width: Optional[int] = None,
        text_fusion: str = "separate",
    ):
        super().__init__()
        channels = _stage_sequence("channels", channels)
        depths = _stage_sequence("depths", depths, len(channels))
        num_heads = _stage_sequence("num_heads", num_heads, len(channels))
        for i, (c, h) in enumerate(zip(channels, num_heads)):
            checks.divisible(f"channels[{i}]", c, f"num_heads[{i}]", h)
        for name, value in (("input_size", input_size), ("in_channels", in_channels), ("time_dim", time_dim)):
            checks.integer(name, value)
        num_classes, text_dim, text_width, text_fusion = text_settings(
            num_classes, text_dim, text_width, text_fusion, time_dim, False, type(self).__name__)
        window = checks.int_pair("window_size", window_size)
        checks.positive_float("mlp_ratio", mlp_ratio)
        checks.probability("class_dropout_prob", class_dropout_prob)
        self.input_size = input_size
        self.in_channels = in_channels
        self.learn_sigma = checks.flag("learn_sigma", learn_sigma)
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.num_classes = num_classes
        self.text_dim, self.text_width, self.text_fusion = text_dim, text_width, text_fusion
        tw = text_width if text_dim else 0  # what the blocks read: 0 builds no text module

        self.t_embedder = TimestepEmbedder(time_dim)
        self.y_embedder = LabelEmbedder(num_classes, time_dim, class_dropout_prob) if num_classes else None
        self.text_embedder = TextEmbedder(text_dim, time_dim, text_width) if text_dim else None
        self.tokenizer = nn.Conv2d(in_channels, channels[0], 3, padding=1)

        def res_blocks(i: int, first_in: int) -> nn.ModuleList:
            ins = [first_in] + [channels[i]] * (depths[i] - 1)
            return nn.ModuleList(
                DiffiTResBlock(c, channels[i], time_dim, num_heads[i], window, mlp_ratio, tw) for c in ins
            )

        n = len(channels)
        self.encoder = nn.ModuleList(res_blocks(i, channels[max(i - 1, 0)]) for i in range(n))
        self.downsamplers = nn.ModuleList(nn.Conv2d(c, c, 3, stride=2, padding=1) for c in channels[:-1])
        self.upsamplers = nn.ModuleList(Upsample(c) for c in channels[1:])
        self.decoder = nn.ModuleList(res_blocks(i, channels[i + 1] + channels[i]) for i in range(n - 1))
        self.head_norm = _group_norm(channels[0])
        self.head = nn.Conv2d(channels[0], self.out_channels, 3, padding=1)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier Linears with zero biases (as DiT), normal(0.02) embedders, a zero head: the model
        starts by predicting zeros."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
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
        """x (B, in_channels, H, W), t (B,), y (B,) int labels or None, text inputs
        (``layers.text.check_text``) -> (B, out_channels, H, W)."""
        time_token, text = self.condition_vector(x, t, y, encoder_hidden_states, encoder_attention_mask, pooled_text)
        ctx = () if text is None else (text.context, text.keep)  # what every DiffiT block reads
        h = self.tokenizer(x)
        skips = []
        for i, stage in enumerate(self.encoder):
            if i:
                h = self.downsamplers[i - 1](h)
            for block in stage:
                h = self.run_block(block, h, time_token, *ctx)
            skips.append(h)
        skips.pop()  # the deepest stage's output is the decoder's input
        for i in reversed(range(len(self.decoder))):
            skip = skips.pop()
            h = torch.cat([self.upsamplers[i](h, skip.shape[-2:]), skip], dim=1)
            for block in self.decoder[i]:
                h = self.run_block(block, h, time_token, *ctx)
        return self._output(self.head(F.silu(self.head_norm(h))), return_dict)


class LatentDiffiT(DiffusionBackbone):
    """Latent DiffiT: an isotropic ViT of DiffiT blocks with global TMSA on patch tokens.

    ``model(x, t, y)``: x (B, in_channels, H, W) latents with H, W multiples of ``patch_size`` and
    at most ``input_size`` (the relative position bias table spans the ``input_size`` token grid,
    so attention stays global), t (B,), y (B,) labels in [0, num_classes] ->
    (B, out_channels, H, W). A frozen 2-D sin-cos position embedding of the actual grid is added
    to the patch tokens (as in DiT); the decoder is LayerNorm then a linear layer. Text
    (``text_dim``, ``text_width`` default hidden_size, ``text_fusion`` "separate" only) as
    ``DiffiT``'s, with the MHCA sub-block in every block.
    """

    _repeated_blocks = ["DiffiTBlock"]
    _no_split_modules = ["DiffiTBlock", "PatchEmbed", "TimestepEmbedder", "LabelEmbedder", "TextEmbedder"]

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = True,
        text_dim: int = 0,
        text_width: Optional[int] = None,
        text_fusion: str = "separate",
    ):
        super().__init__()
        for name, value in (("input_size", input_size), ("patch_size", patch_size), ("in_channels", in_channels),
                            ("hidden_size", hidden_size), ("depth", depth)):
            checks.integer(name, value)
        num_classes, text_dim, text_width, text_fusion = text_settings(
            num_classes, text_dim, text_width, text_fusion, hidden_size, False, type(self).__name__)
        checks.divisible("input_size", input_size, "patch_size", patch_size)
        if hidden_size % 4:
            raise ValueError(f"hidden_size must be divisible by 4 (2-D sin-cos embedding), got {hidden_size}")
        checks.probability("class_dropout_prob", class_dropout_prob)
        self.input_size = input_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.learn_sigma = checks.flag("learn_sigma", learn_sigma)
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.num_classes = num_classes
        self.hidden_size = hidden_size
        self.text_dim, self.text_width, self.text_fusion = text_dim, text_width, text_fusion

        grid = input_size // patch_size
        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob) if num_classes else None
        self.text_embedder = TextEmbedder(text_dim, hidden_size, text_width) if text_dim else None
        self.blocks = nn.ModuleList(
            DiffiTBlock(hidden_size, hidden_size, num_heads, grid, mlp_ratio, text_width if text_dim else 0)
            for _ in range(depth)
        )
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialisation where the modules are DiT's (xavier Linears with zero biases, the patch
        embedding as a flat Linear, normal(0.02) embedders) and a zero decoder."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        zero_init_text(self)

    def check_size(self, H: int, W: int) -> None:
        p, n = self.patch_size, self.input_size
        if H % p or W % p or H > n or W > n:
            raise ValueError(
                f"latent size {(H, W)} must be multiples of patch_size {p} and at most input_size {n} "
                f"(the relative position bias spans the input_size grid); build the model with a larger input_size"
            )

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
        time_token, text = self.condition_vector(x, t, y, encoder_hidden_states, encoder_attention_mask, pooled_text)
        ctx = () if text is None else (text.context, text.keep)  # what every DiffiT block reads
        B, _, H, W = x.shape
        p = self.patch_size
        h, w = H // p, W // p
        tokens = self.x_embedder(x) + sincos_2d(self.hidden_size, h, w, device=x.device, dtype=x.dtype)
        tokens = tokens.view(B, h, w, self.hidden_size)
        for block in self.blocks:
            tokens = self.run_block(block, tokens, time_token, *ctx)
        out = self.linear(self.norm_final(tokens))  # (B, h, w, p*p*C_out)
        out = out.view(B, h, w, p, p, self.out_channels)
        return self._output(torch.einsum("nhwpqc->nchpwq", out).reshape(B, self.out_channels, H, W), return_dict)


# Appendix I: CIFAR-10 3 stages x 2 blocks, window 4; FFHQ-64 4 stages of 1, 2, 2, 2 blocks,
# window 8; 128 channels, then 256 kept constant (Table S.2); time token 512 wide (Table 3).
# Both unconditional (one class) with EDM's eps output.
_IMAGE = dict(in_channels=3, mlp_ratio=4.0, time_dim=512, num_classes=1, learn_sigma=False)

DIFFIT_PRESETS: Dict[str, Tuple[type, dict]] = {
    "DiffiT-CIFAR10": (DiffiT, dict(
        input_size=32, channels=(128, 256, 256), depths=(2, 2, 2), num_heads=(4, 8, 8), window_size=4, **_IMAGE,
    )),
    "DiffiT-FFHQ64": (DiffiT, dict(
        input_size=64, channels=(128, 256, 256, 256), depths=(1, 2, 2, 2), num_heads=(4, 8, 8, 8), window_size=8,
        **_IMAGE,
    )),
    # Appendix H.2 reads depth 30; the released code's DiffiT-XL/2 has 28, which gives the paper's
    # 561M parameters (30 gives 601M): docs/backbones.md
    "DiffiT-latent-XL/2": (LatentDiffiT, dict(
        input_size=32, patch_size=2, hidden_size=1152, depth=28, num_heads=16, mlp_ratio=4.0, num_classes=1000,
    )),
}
