"""ASCEND: an asymmetric encoder-decoder ("Exploring Vision Transformers as Diffusion Learners",
Cao et al., §3.3, §4.2, Table 6, Appendix B.2) on pixels or latents.

    x (B, C_in, H, W)
      -> input conv 3x3                                   (B, ch, H, W)            skip
      -> encoder level l = 0..L-1 (width ch * mult[l]):
           depth x [ResBlock, then a SwinPair at an attention resolution]         skip each
           DownBlock: BigGAN residual downsampling (not after the last level)     skip
      -> middle: ResBlock, SwinPair, ResBlock
      -> decoder level l = L-1..0: (depth + 1) x ResBlock(cat[h, skip]), then an UpBlock:
         BigGAN residual upsampling (not after level 0)
      -> GroupNorm, SiLU, zero-initialised conv 3x3        (B, C_out, H, W)

The encoder is ADM's input half with its attention layers replaced by Swin blocks (a SwinPair:
one regular and one shifted window layer through ``ops.window_attention``); the decoder is ADM's
output half without attention ("a light convolutional decoder"); every encoder output is a skip
(ADM's dense skips). Time and class enter as in ADM: ``c = t_emb + y_emb`` of width 4 * ch, and
every ResBlock and Swin layer projects its own adaLN shift/scale from ``SiLU(c)``. The readings
of what the paper leaves open are in docs/backbones.md (section "ASCEND").
"""
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import checks
from ..layers.adaln import Modulator
from ..layers.blocks import SwinBlock
from ..layers.embed import LabelEmbedder, TimestepEmbedder
from ..layers.text import TextEmbedder, text_settings
from .base import DiffusionBackbone

GROUPS = 32  # ADM's GroupNorm32


def _int_sequence(name: str, value, allow_empty: bool = False) -> Tuple[int, ...]:
    """A sequence of ints >= 1 (non-empty unless ``allow_empty``), as a tuple."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise TypeError(f"{name} must be a sequence of ints, got {value!r}")
    if len(value) == 0 and not allow_empty:
        raise ValueError(f"{name} must be a non-empty sequence, got {value!r}")
    return tuple(checks.integer(f"{name}[{i}]", v) for i, v in enumerate(value))


class ResBlock(nn.Module):
    """ADM's residual block with scale-shift norm: (B, C_in, H, W), silu_c (B, c_dim) -> (B, C_out, H, W).

        h = conv3x3(SiLU(GN(x)))
        h = conv3x3(dropout(SiLU(GN(h) * (1 + scale) + shift)))      (last conv zero-initialised)
        out = skip(x) + h                                             (skip: identity or conv1x1)

    The adaLN (shift, scale) comes from the block's ``Modulator`` (ADM's ``emb_layers``).
    """

    def __init__(self, in_channels: int, out_channels: int, c_dim: int, dropout: float = 0.0):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if checks.integer(name, value) % GROUPS:
                raise ValueError(f"{name} must be a multiple of {GROUPS} (GroupNorm groups), got {value}")
        self.in_norm = nn.GroupNorm(GROUPS, in_channels)
        self.in_conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.mod = Modulator(c_dim, out_channels, channels_last=False)
        self.out_norm = nn.GroupNorm(GROUPS, out_channels)
        self.dropout = nn.Dropout(checks.probability("dropout", dropout))
        self.out_conv = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def branch(self, x: torch.Tensor, silu_c: torch.Tensor, resample: Optional[Callable] = None) -> torch.Tensor:
        """The residual branch, resampling (if given) after the first activation (BigGAN's order)."""
        h = F.silu(self.in_norm(x))
        h = self.in_conv(h if resample is None else resample(h))
        h = F.silu(self.mod(self.out_norm(h), silu_c))
        return self.out_conv(self.dropout(h))

    def forward(self, x: torch.Tensor, silu_c: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.branch(x, silu_c)


class DownBlock(ResBlock):
    """BigGAN-style residual downsampling: (B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2)), 2x2 average
    pooling (ceil mode: an odd side keeps its last row or column) on both paths.

    A forward of its own (as ``UpBlock``), so that ``torch.compile`` caches each kind of block apart.
    """

    def __init__(self, channels: int, c_dim: int, dropout: float = 0.0):
        super().__init__(channels, channels, c_dim, dropout)

    def forward(self, x: torch.Tensor, silu_c: torch.Tensor) -> torch.Tensor:
        def down(h):
            return F.avg_pool2d(h, 2, ceil_mode=True)

        return down(x) + self.branch(x, silu_c, down)


class UpBlock(ResBlock):
    """BigGAN-style residual upsampling: (B, C, H, W) -> (B, C, *size), nearest-neighbour on both
    paths; ``size`` is the map size of the encoder level above (2H, or 2H - 1 after an odd side)."""

    def __init__(self, channels: int, c_dim: int, dropout: float = 0.0):
        super().__init__(channels, channels, c_dim, dropout)

    def forward(self, x: torch.Tensor, silu_c: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        def up(h):
            return F.interpolate(h, size=size, mode="nearest")

        return up(x) + self.branch(x, silu_c, up)


class SwinPair(nn.Module):
    """The paper's "SwinBlock": a regular then a shifted window layer (two modulated SwinV2
    ``SwinBlock`` layers, shift half the window): (B, C, H, W), silu_c (B, c_dim) -> (B, C, H, W).

    With ``text_width`` > 0 the pair has one MHCA sub-block, in its shifted layer after the
    window attention: W-MSA, MLP, SW-MSA, MHCA, MLP; context (B, L_text, text_width) and keep
    (B, L_text) bool or None as ``SwinBlock``'s.
    """

    def __init__(self, dim: int, num_heads: int, window_size: Tuple[int, int], c_dim: int, mlp_ratio: float = 4.0,
                 text_width: int = 0):
        super().__init__()
        half = (window_size[0] // 2, window_size[1] // 2)
        self.regular = SwinBlock(dim, num_heads, window_size, (0, 0), c_dim, mlp_ratio)
        self.shifted = SwinBlock(dim, num_heads, window_size, half, c_dim, mlp_ratio, text_width=text_width)

    def forward(self, x: torch.Tensor, silu_c: torch.Tensor, context: Optional[torch.Tensor] = None,
                keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = x.permute(0, 2, 3, 1)  # channels-last tokens for the window layers
        h = self.shifted(self.regular(h, silu_c), silu_c, context, keep)
        return h.permute(0, 3, 1, 2)


class EncoderUnit(nn.Module):
    """One of an encoder level's ``depth`` units: a ResBlock, then a SwinPair or nothing."""

    def __init__(self, res: ResBlock, swin: Optional[SwinPair]):
        super().__init__()
        self.res = res
        self.swin = swin


class Level(nn.Module):
    """An encoder level (units, then a DownBlock or None) or a decoder level (ResBlocks fed with
    skips, then an UpBlock or None)."""

    def __init__(self, blocks: Sequence[nn.Module], resample: Optional[ResBlock]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.resample = resample


class ASCEND(DiffusionBackbone):
    """ASCEND backbone: ``model(x, t, y)`` -> (B, out_channels, H, W) for any H, W >= 1.

    Args:
        input_size (int): the nominal image (or latent) size (metadata: the model runs at any
            size; each level halves it, rounding up). Default: 32.
        in_channels (int): image or latent channels. Default: 3.
        channels (int): base width ch, a multiple of 32. Default: 128.
        channel_mult (Sequence[int]): width ch * mult per level. Default: (1, 2, 2, 2).
        depth (int): ResBlocks (and SwinPairs) per encoder level; the decoder has depth + 1.
            Default: 3.
        attention_downsample (Sequence[int]): the downsampling factors 2**level of the encoder
            levels whose units carry a SwinPair (ADM's convention; Table 6's attention
            resolutions 16, 8 at 32 px are factors 2, 4). Default: (2, 4).
        head_channels (int): channels per attention head. Default: 64.
        window_size (int or (int, int)): Swin window; the shifted layer shifts by half of it.
            Default: 8.
        mlp_ratio (float): MLP width / width of the Swin layers. Default: 4.
        dropout (float): dropout inside the ResBlocks. Default: 0.1.
        class_dropout_prob (float): label dropout for classifier-free guidance. Default: 0.1.
        num_classes (int): classes (1: unconditional); label ``num_classes`` is the null class.
            Default: 1.
        learn_sigma (bool): output 2 * in_channels (eps and variance). Default: False.
        text_dim (int): width of the text encoder's outputs; 0 (default) builds the class-only
            model. With text, ``model(x, t, y, encoder_hidden_states, encoder_attention_mask,
            pooled_text)``: the pooled text is added to c and every SwinPair of the encoder and
            the middle block has one MHCA sub-block (the decoder stays convolutional).
        text_width (int, Optional): width of the projected text sequence (Table 6's "text
            encoder width"). Default: 4 * channels.
        text_fusion (str): "separate" only; "fused" (GLIDE) is refused: the Swin layers attend
            within windows.
        num_classes may be 0 with text (a text-only model; y must be None).
    """

    _repeated_blocks = ["ResBlock", "DownBlock", "UpBlock", "SwinPair"]
    _no_split_modules = ["ResBlock", "DownBlock", "UpBlock", "SwinPair", "TimestepEmbedder", "LabelEmbedder", "TextEmbedder"]

    def __init__(
        self,
        input_size: int = 32,
        in_channels: int = 3,
        channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        depth: int = 3,
        attention_downsample: Sequence[int] = (2, 4),
        head_channels: int = 64,
        window_size=8,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1,
        learn_sigma: bool = False,
        text_dim: int = 0,
        text_width: Optional[int] = None,
        text_fusion: str = "separate",
    ):
        super().__init__()
        for name, value in (("input_size", input_size), ("in_channels", in_channels), ("channels", channels),
                            ("depth", depth), ("head_channels", head_channels)):
            checks.integer(name, value)
        num_classes, text_dim, text_width, text_fusion = text_settings(
            num_classes, text_dim, text_width, text_fusion, 4 * channels, False, type(self).__name__)
        channel_mult = _int_sequence("channel_mult", channel_mult)
        factors = [2**lvl for lvl in range(len(channel_mult))]
        attention_downsample = _int_sequence("attention_downsample", attention_downsample, allow_empty=True)
        for f in attention_downsample:
            if f not in factors:
                raise ValueError(f"attention_downsample must hold level factors {factors}, got {f}")
        window = checks.int_pair("window_size", window_size)
        checks.flag("learn_sigma", learn_sigma)
        for w in sorted({channels * m for m in channel_mult}):
            if w % GROUPS:
                raise ValueError(f"each level width channels * channel_mult must be a multiple of {GROUPS} (GroupNorm "
                                 f"groups), got {w} from channels={channels}, channel_mult={channel_mult}")
            checks.divisible("a level width (channels * channel_mult)", w, "head_channels", head_channels)

        self.input_size = input_size
        self.in_channels = in_channels
        self.learn_sigma = learn_sigma
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.num_classes = num_classes
        self.text_dim, self.text_width, self.text_fusion = text_dim, text_width, text_fusion
        c_dim = 4 * channels  # ADM's time-embedding width
        self.t_embedder = TimestepEmbedder(c_dim)
        self.y_embedder = LabelEmbedder(num_classes, c_dim, class_dropout_prob) if num_classes else None
        self.text_embedder = TextEmbedder(text_dim, c_dim, text_width) if text_dim else None

        def res(c_in: int, c_out: int) -> ResBlock:
            return ResBlock(c_in, c_out, c_dim, dropout)

        def swin(width: int) -> SwinPair:
            return SwinPair(width, width // head_channels, window, c_dim, mlp_ratio, text_width if text_dim else 0)

        widths = [channels * m for m in channel_mult]
        swin_levels = [f in attention_downsample for f in factors]
        self.input_conv = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.encoder = nn.ModuleList()
        skip_widths, width = [channels], channels
        for lvl, w in enumerate(widths):
            units = [EncoderUnit(res(width if i == 0 else w, w), swin(w) if swin_levels[lvl] else None)
                     for i in range(depth)]
            down = DownBlock(w, c_dim, dropout) if lvl < len(widths) - 1 else None
            self.encoder.append(Level(units, down))
            skip_widths += [w] * (depth + (down is not None))
            width = w

        self.middle = nn.ModuleList([res(width, width), swin(width), res(width, width)])

        self.decoder = nn.ModuleList()
        for lvl in reversed(range(len(widths))):
            w = widths[lvl]
            blocks = [res((width if i == 0 else w) + skip_widths.pop(), w) for i in range(depth + 1)]
            self.decoder.append(Level(blocks, UpBlock(w, c_dim, dropout) if lvl else None))
            width = w

        self.out_norm = nn.GroupNorm(GROUPS, width)
        self.out_conv = nn.Conv2d(width, self.out_channels, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

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
        c, text = self.condition_vector(x, t, y, encoder_hidden_states, encoder_attention_mask, pooled_text)
        silu_c = F.silu(c)  # (B, 4 ch)
        ctx = () if text is None else (text.context, text.keep)  # what every SwinPair reads

        h = self.input_conv(x)
        skips = [h]
        for level in self.encoder:
            for unit in level.blocks:
                h = self.run_block(unit.res, h, silu_c)
                if unit.swin is not None:
                    h = self.run_block(unit.swin, h, silu_c, *ctx)
                skips.append(h)
            if level.resample is not None:
                h = self.run_block(level.resample, h, silu_c)
                skips.append(h)

        for block in self.middle:
            h = self.run_block(block, h, silu_c, *(ctx if isinstance(block, SwinPair) else ()))

        for level in self.decoder:
            for block in level.blocks:
                h = self.run_block(block, torch.cat([h, skips.pop()], dim=1), silu_c)
            if level.resample is not None:
                # back to the size of the skips of the level above (odd sizes were rounded up)
                h = self.run_block(level.resample, h, silu_c, tuple(skips[-1].shape[-2:]))

        return self._output(self.out_conv(F.silu(self.out_norm(h))), return_dict)


def _table6(size: int, channels: int, channel_mult: Tuple[int, ...], depth: int,
            attention_resolutions: Tuple[int, ...], dropout: float) -> dict:
    """A column of Table 6 as constructor arguments (resolutions become downsampling factors)."""
    return dict(input_size=size, channels=channels, channel_mult=channel_mult, depth=depth,
                attention_downsample=tuple(size // r for r in attention_resolutions), head_channels=64,
                dropout=dropout)


# Table 6 of the paper: 32x32 (CIFAR-10), 64x64 (CelebA), 256x256 (LSUN, CUB Bird); unconditional
# pixel-space models with 3 channels (train.py overrides input_size, in_channels, num_classes)
ASCEND_PRESETS: Dict[str, Tuple[type, dict]] = {
    "ASCEND-32": (ASCEND, _table6(32, 128, (1, 2, 2, 2), 3, (16, 8), 0.1)),
    "ASCEND-64": (ASCEND, _table6(64, 192, (1, 2, 3, 4), 2, (32, 16, 8), 0.1)),
    "ASCEND-256": (ASCEND, _table6(256, 256, (1, 1, 2, 2, 3, 4), 2, (32, 16, 8), 0.0)),
    # the T2I-128 column: T5-XXL encodings (4096 wide) projected to the table's "text encoder
    # width" 1024, text-only (no labels); 615.2M parameters against the paper's ~590M without the
    # text encoder (docs/backbones.md)
    "ASCEND-T2I-128": (ASCEND, dict(_table6(128, 192, (1, 2, 3, 4, 4), 3, (64, 32, 16, 8), 0.0),
                                    num_classes=0, text_dim=4096, text_width=1024)),
}
