"""XSwin and USwin: hierarchical SwinV2 U-Nets for latent diffusion (the X-Swin report).

    latents (B, C_in, H, W)
      -> ConvTriplet            (B, C, H, W)          kept for the output concatenation
      -> Patching               (B, H/p, W/p, C)
      -> encoder stages         Swin blocks, PatchMerging between stages; each stage output is a skip
      -> ViT bottleneck         global attention + 2-D sin-cos position embedding of the actual size
      -> decoder stages         PatchExpanding, skip (cross-attention: XSwin; raw: USwin),
                                concat -> Swin block at 2C -> Linear 2C->C -> Swin blocks
      -> UnPatching             (B, C, H, W)
      -> concat with the input-conv features -> ConvTriplet -> OutputHead  (B, C_out, H, W)

Every parameterised layer is preceded by an adaLN modulator driven by timestep + class
embeddings. Deviations from the original code are listed in docs/design.md §4 and the README.
"""
import inspect
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import checks
from ..layers.attention import WindowCrossAttention
from ..layers.blocks import SwinBlock, ViTBlock
from ..layers.adaln import Modulator
from ..layers.conv import ConvTriplet, OutputHead
from ..layers.embed import LabelEmbedder, TimestepEmbedder, sincos_2d
from ..layers.patching import PatchExpanding, PatchMerging, Patching, UnPatching
from ..layers.text import TextEmbedder, text_settings, zero_init_text
from .base import DiffusionBackbone

MAX_WINDOW = 16


def _int_sequence(name: str, value) -> Tuple[int, ...]:
    """A non-empty sequence of ints >= 1 (one per stage), as a tuple."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise TypeError(f"{name} must be a sequence of ints, one per stage, got {value!r}")
    if len(value) == 0:
        raise ValueError(f"depths and num_heads must be non-empty sequences, got {name} = {value!r}")
    return tuple(checks.integer(f"{name}[{i}]", v) for i, v in enumerate(value))


class EncoderStage(nn.Module):
    def __init__(self, blocks: Sequence[nn.Module], downsample: Optional[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample


class PointwiseProjection(nn.Module):
    """Modulate -> Linear over channels-last tokens: (B, H, W, C_in) -> (B, H, W, C_out).

    The channel reduction (2C -> C) of a decoder stage, after its first, double-width block.
    """

    def __init__(self, in_dim: int, out_dim: int, c_dim: int):
        super().__init__()
        self.mod = Modulator(c_dim, in_dim)
        self.linear = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor, silu_c: torch.Tensor) -> torch.Tensor:
        return self.linear(self.mod(x, silu_c))


class DecoderStage(nn.Module):
    """upsample -> skip branch -> concat -> blocks[0] (2C) -> reduce (2C -> C) -> blocks[1:] (C)."""

    def __init__(self, upsample, skip_attn, blocks: Sequence[nn.Module], reduce: nn.Module):
        super().__init__()
        self.upsample = upsample
        self.skip_attn = skip_attn
        self.blocks = nn.ModuleList(blocks)
        self.reduce = reduce


class XSwin(DiffusionBackbone):
    """X-Swin latent-diffusion backbone: ``model(x, t, y)`` -> (B, out_channels, H, W).

    Args:
        input_size (int): nominal latent size (metadata; the model runs at any size divisible by
            ``patch_size``). Default: 32.
        patch_size (int): patch size of the token grid. Default: 2.
        in_channels (int): latent channels. Default: 4.
        embed_dim (int): width C of the first stage; stage i has C * 2**i. Default: 192.
        depths (Sequence[int]): Swin blocks per stage. Default: (3, 3).
        num_heads (Sequence[int]): heads per stage (doubled in each decoder stage's first block).
        window_size (int or (int, int)): Swin window, at most 16 per axis. Default: 8.
        mlp_ratio (float): MLP width / block width. Default: 4.
        bottleneck_depth (int): global-attention ViT blocks in the middle. Default: 3.
        bottleneck_heads (int, Optional): heads of the bottleneck. Default: num_heads[-1].
        final_downsample (bool): merge once more before the bottleneck. Default: False.
        stochastic_depth_prob (float): largest drop-path rate of the Swin blocks. Default: 0.1.
        class_dropout_prob (float): label dropout for classifier-free guidance. Default: 0.1.
        num_classes (int): classes; label ``num_classes`` is the null class. Default: 1000.
        learn_sigma (bool): output 2 * in_channels (eps and variance). Default: True.
        cross_attention_skips (bool): localized window cross-attention skips (XSwin) or raw
            concatenation skips (USwin). Default: True.
        conv_blocks (bool): the outer modulated conv triplets. Default: True.
        norm_eps (float): LayerNorm eps. Default: 1e-5.
        text_dim (int): width of the text encoder's outputs; 0 (default) builds the class-only
            model. With text, ``model(x, t, y, encoder_hidden_states, encoder_attention_mask,
            pooled_text)``: the pooled text is added to the conditioning vector and every Swin
            block (stages) and ViT block (bottleneck) has the separate MHCA sub-block.
        text_width (int, Optional): width of the projected text sequence. Default: embed_dim.
        text_fusion (str): "separate" only; "fused" (GLIDE) is refused: the Swin stages attend
            within windows.
        num_classes may be 0 with text (a text-only model; y must be None).
    """

    _repeated_blocks = ["SwinBlock", "ViTBlock"]
    # what accelerate's device_map keeps on one device: the blocks and every module whose forward
    # combines its children's outputs
    _no_split_modules = [
        "SwinBlock", "ViTBlock", "ConvTriplet", "Patching", "PatchMerging", "PatchExpanding", "PointwiseProjection",
        "WindowCrossAttention", "UnPatching", "OutputHead", "TimestepEmbedder", "LabelEmbedder", "TextEmbedder",
    ]

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 4,
        embed_dim: int = 192,
        depths: Sequence[int] = (3, 3),
        num_heads: Sequence[int] = (6, 12),
        window_size=8,
        mlp_ratio: float = 4.0,
        bottleneck_depth: int = 3,
        bottleneck_heads: Optional[int] = None,
        final_downsample: bool = False,
        stochastic_depth_prob: float = 0.1,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = True,
        cross_attention_skips: bool = True,
        conv_blocks: bool = True,
        norm_eps: float = 1e-5,
        text_dim: int = 0,
        text_width: Optional[int] = None,
        text_fusion: str = "separate",
    ):
        super().__init__()
        depths, num_heads = _int_sequence("depths", depths), _int_sequence("num_heads", num_heads)
        window = checks.int_pair("window_size", window_size)
        if not all(w <= MAX_WINDOW for w in window):
            raise ValueError(f"window_size must be in [1, {MAX_WINDOW}] per axis, got {window}")
        for name, value in (("input_size", input_size), ("patch_size", patch_size), ("in_channels", in_channels),
                            ("embed_dim", embed_dim)):
            checks.integer(name, value)
        num_classes, text_dim, text_width, text_fusion = text_settings(
            num_classes, text_dim, text_width, text_fusion, embed_dim, False, type(self).__name__)
        checks.divisible("input_size", input_size, "patch_size", patch_size)
        checks.integer("bottleneck_depth", bottleneck_depth, minimum=0)
        for name, value in (("final_downsample", final_downsample), ("learn_sigma", learn_sigma),
                            ("cross_attention_skips", cross_attention_skips), ("conv_blocks", conv_blocks)):
            checks.flag(name, value)
        checks.probability("stochastic_depth_prob", stochastic_depth_prob, below_one=True)
        checks.probability("class_dropout_prob", class_dropout_prob)
        checks.positive_float("mlp_ratio", mlp_ratio)
        checks.positive_float("norm_eps", norm_eps)
        if len(num_heads) != len(depths):
            raise ValueError(f"num_heads must have one entry per stage ({len(depths)}), got {num_heads}")
        for i, h in enumerate(num_heads):
            if (embed_dim * 2**i) % h:
                raise ValueError(f"num_heads[{i}] = {h} must divide the stage width {embed_dim * 2**i}")
        mid_dim = embed_dim * 2 ** (len(depths) - 1 + int(final_downsample))
        if mid_dim % 4:
            # the bottleneck's 2-D sin-cos embedding spends mid_dim/2 features per axis, in [sin, cos] pairs
            raise ValueError(f"the bottleneck width embed_dim * 2**stages = {mid_dim} must be divisible by 4")
        bottleneck_heads = num_heads[-1] if bottleneck_heads is None else checks.integer("bottleneck_heads", bottleneck_heads)
        if mid_dim % bottleneck_heads:
            raise ValueError(f"bottleneck_heads = {bottleneck_heads} must divide the bottleneck width {mid_dim}")

        self.input_size, self.patch_size = input_size, patch_size
        self.in_channels = in_channels
        self.learn_sigma = learn_sigma
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.num_classes = num_classes
        self.embed_dim, self.depths, self.num_heads = embed_dim, depths, num_heads
        self.window_size = window
        self.final_downsample = final_downsample
        self.cross_attention_skips = cross_attention_skips
        self.conv_blocks = conv_blocks
        self.text_dim, self.text_width, self.text_fusion = text_dim, text_width, text_fusion
        tw = text_width if text_dim else 0  # what the blocks read: 0 builds no text module
        c_dim = embed_dim

        self.t_embedder = TimestepEmbedder(c_dim)
        self.y_embedder = LabelEmbedder(num_classes, c_dim, class_dropout_prob) if num_classes else None
        self.text_embedder = TextEmbedder(text_dim, c_dim, text_width) if text_dim else None

        if conv_blocks:
            self.conv_in = ConvTriplet(in_channels, embed_dim, c_dim)
        self.patching = Patching(embed_dim if conv_blocks else in_channels, embed_dim, patch_size, c_dim, norm_eps)

        # drop-path rates rise linearly over encoder then decoder blocks (the original's schedule)
        n_blocks = 2 * sum(depths)
        rates = iter([stochastic_depth_prob * i / max(n_blocks - 1, 1) for i in range(n_blocks)])
        shift = lambda i: (0, 0) if i % 2 == 0 else (window[0] // 2, window[1] // 2)  # noqa: E731

        self.encoder = nn.ModuleList()
        for s, depth in enumerate(depths):
            dim = embed_dim * 2**s
            blocks = [
                SwinBlock(dim, num_heads[s], window, shift(i), c_dim, mlp_ratio, next(rates), norm_eps, tw)
                for i in range(depth)
            ]
            down = PatchMerging(dim, c_dim, norm_eps) if s < len(depths) - 1 or final_downsample else None
            self.encoder.append(EncoderStage(blocks, down))

        self.bottleneck = nn.ModuleList(
            [ViTBlock(mid_dim, bottleneck_heads, c_dim, mlp_ratio, norm_eps, tw) for _ in range(bottleneck_depth)]
        )

        self.decoder = nn.ModuleList()
        for s in reversed(range(len(depths))):
            dim = embed_dim * 2**s
            up = PatchExpanding(2 * dim, c_dim, norm_eps) if s < len(depths) - 1 or final_downsample else None
            skip = WindowCrossAttention(dim, num_heads[s], window, c_dim, norm_eps) if cross_attention_skips else None
            blocks = [
                SwinBlock(
                    dim * (2 if i == 0 else 1), num_heads[s] * (2 if i == 0 else 1), window, shift(i),
                    c_dim, mlp_ratio, next(rates), norm_eps, tw,
                )
                for i in range(depths[s])
            ]
            self.decoder.append(DecoderStage(up, skip, blocks, PointwiseProjection(2 * dim, dim, c_dim)))

        self.unpatching = UnPatching(embed_dim, patch_size, c_dim)
        if conv_blocks:
            self.conv_out = ConvTriplet(2 * embed_dim, embed_dim, c_dim)
        self.head = OutputHead(embed_dim, self.out_channels, c_dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """The original's init: xavier Linears, ~0 biases, unit norms; modulators zero (identity)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.trunc_normal_(m.bias, std=1e-6)
            elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
                nn.init.ones_(m.weight)
                nn.init.trunc_normal_(m.bias, std=1e-6)
        for m in self.modules():
            if isinstance(m, Modulator):
                nn.init.zeros_(m.linear.weight)
                nn.init.zeros_(m.linear.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        zero_init_text(self)

    def check_size(self, H: int, W: int) -> None:
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"latent size {(H, W)} must be divisible by patch_size {p}")

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
        silu_c = F.silu(c)  # (B, C): every modulator projects its own (shift, scale) from it
        ctx = () if text is None else (text.context, text.keep)  # what every transformer block reads

        if self.conv_blocks:
            x = self.conv_in(x, silu_c)  # (B, C, H, W)
        conv_features = x
        h = self.patching(x, silu_c)  # (B, H/p, W/p, C)

        skips = []
        for stage in self.encoder:
            for block in stage.blocks:
                h = self.run_block(block, h, silu_c, *ctx)
            skips.append(h)
            if stage.downsample is not None:
                h = stage.downsample(h, silu_c)

        B, Hb, Wb, Cb = h.shape
        h = h.reshape(B, Hb * Wb, Cb) + sincos_2d(Cb, Hb, Wb, device=h.device, dtype=h.dtype)
        for block in self.bottleneck:
            h = self.run_block(block, h, silu_c, *ctx)
        h = h.view(B, Hb, Wb, Cb)

        for stage in self.decoder:
            skip = skips.pop()
            if stage.upsample is not None:
                h = stage.upsample(h, silu_c, target=skip.shape[1:3])
            if stage.skip_attn is not None:
                skip = stage.skip_attn(h, skip, silu_c)
            # the skip branch ends in proj + LayerNorm (as the original), so the attention kernel's
            # out= cannot write this half in place (docs/window_attention.md)
            h = torch.cat([h, skip], dim=-1)  # (B, H_s, W_s, 2 C_s)
            h = self.run_block(stage.blocks[0], h, silu_c, *ctx)
            h = stage.reduce(h, silu_c)
            for block in stage.blocks[1:]:
                h = self.run_block(block, h, silu_c, *ctx)

        h = self.unpatching(h, silu_c)  # (B, C, H, W)
        if self.conv_blocks:
            h = self.conv_out(torch.cat([h, conv_features], dim=1), silu_c)
        return self._output(self.head(h, silu_c), return_dict)


class USwin(XSwin):
    """XSwin with plain concatenation skips instead of window cross-attention (the paper's ablation)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("cross_attention_skips", False)
        super().__init__(**kwargs)

    # diffusers reads the config keys from the __init__ signature: XSwin's, with USwin's default
    __init__.__signature__ = inspect.signature(XSwin.__init__).replace(
        parameters=[
            p.replace(default=False) if p.name == "cross_attention_skips" else p
            for p in inspect.signature(XSwin.__init__).parameters.values()
        ]
    )


# the X-Swin report's configuration: 64-px images through the SD VAE (latent 8x8x4), 101 classes
_PAPER = dict(
    input_size=8, patch_size=1, embed_dim=192, depths=(3, 3), num_heads=(6, 12), window_size=2,
    bottleneck_depth=3, final_downsample=False, num_classes=101,
)

# scaled presets for 256-px images (latent 32x32): patch 2, 8x8 windows, bottleneck at 8x8 tokens;
# each within 10% of the parameters of the DiT preset of the same letter, with fewer FLOPs
_SIZES: Dict[str, dict] = {
    "S": dict(embed_dim=192, depths=(3, 3), num_heads=(6, 12), bottleneck_depth=3),
    "B": dict(embed_dim=384, depths=(3, 3), num_heads=(6, 12), bottleneck_depth=3),
    "L": dict(embed_dim=640, depths=(3, 3), num_heads=(10, 20), bottleneck_depth=6),
    "XL": dict(embed_dim=768, depths=(3, 3), num_heads=(12, 24), bottleneck_depth=7),
}

XSWIN_PRESETS: Dict[str, Tuple[type, dict]] = {
    "XSwin-paper": (XSwin, dict(_PAPER)),
    "USwin-paper": (USwin, dict(_PAPER)),
}
for _size, _cfg in _SIZES.items():
    for _p in (2, 4):
        _base = dict(input_size=32, patch_size=_p, window_size=8, num_classes=1000, **_cfg)
        XSWIN_PRESETS[f"XSwin-{_size}/{_p}"] = (XSwin, _base)
        XSWIN_PRESETS[f"USwin-{_size}/{_p}"] = (USwin, dict(_base))
