"""DiT and UViT: the full-attention baselines.

``DiT`` is architecturally identical to facebookresearch/DiT ``models.py`` (same module and
parameter names, same initialisation), so an official DiT checkpoint loads with
``strict=True``. The only changes are that the adaLN arithmetic goes through
``xswin_fast.ops`` (``layernorm_modulate``, ``gated_residual``), so a kernel backend can fuse it.

``UViT`` is the X-Swin paper's "UDiT" baseline: DiT blocks with U-ViT long skips, where each
decoder block first fuses ``cat([x, skip])`` through ``skip_linear = Linear(2D, D)``.

Presets follow DiT's table (``DiT-{S,B,L,XL}/{2,4,8}``) and the same twelve for ``UViT-...``.
"""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from .. import ops
from ..layers import checks
from ..layers.attention import Attention
from ..layers.blocks import self_attention, text_branch
from ..layers.embed import LabelEmbedder, TimestepEmbedder, sincos_2d
from ..layers.mlp import Mlp, mlp_hidden_dim
from ..layers.text import TextCrossAttention, TextEmbedder, TextInputs, text_settings, zero_init_text
from .base import DiffusionBackbone

__all__ = ["PatchEmbed", "DiTBlock", "UViTBlock", "FinalLayer", "DiT", "UViT", "DIT_PRESETS"]


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens: (B, C, H, W) -> (B, H/p * W/p, D), row-major.

    A Conv2d with kernel = stride = p, named ``proj`` as in timm's PatchEmbed (which DiT uses).
    """

    def __init__(self, patch_size: int, in_channels: int, embed_dim: int):
        super().__init__()
        self.patch_size = checks.integer("patch_size", patch_size)
        checks.integer("in_channels", in_channels)
        checks.integer("embed_dim", embed_dim)
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning: (B, L, D), c (B, D) -> (B, L, D).

    ``x += gate_msa * attn(modulate(LN(x), shift_msa, scale_msa))``, then the same for the MLP;
    the six (B, D) modulation vectors come from ``adaLN_modulation(c)``.

    With ``text_width`` > 0 the block also reads the text context (B, L_text, text_width) and its
    key-padding mask keep (B, L_text) bool or None: ``text_fusion="separate"`` adds the MHCA
    sub-block ``x += cross_attn(x, context)`` after the self-attention; ``"fused"`` gives the
    self-attention the text tokens' keys and values (GLIDE).
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, mlp_norm_eps: float = 1e-6,
                 text_width: int = 0, text_fusion: str = "separate"):
        super().__init__()
        self.backend: Optional[str] = None
        fused = text_width if text_fusion == "fused" else 0
        # The norms have no parameters; they are kept as modules so the structure (and repr)
        # matches DiT, while the forward normalises inside ops.layernorm_modulate.
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True, context_dim=fused)
        if text_width and not fused:
            self.cross_attn = TextCrossAttention(hidden_size, num_heads, text_width)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=mlp_norm_eps)
        self.mlp = Mlp(hidden_size, mlp_hidden_dim(hidden_size, mlp_ratio), approximate="tanh")
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor, context: Optional[torch.Tensor] = None,
                keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        h = ops.layernorm_modulate(x, shift_msa, scale_msa, eps=self.norm1.eps, backend=self.backend)
        x = ops.gated_residual(x, self_attention(self, h, context, keep), gate_msa, backend=self.backend)
        x = text_branch(self, x, context, keep)
        h = ops.layernorm_modulate(x, shift_mlp, scale_mlp, eps=self.norm2.eps, backend=self.backend)
        x = ops.gated_residual(x, self.mlp(h), gate_mlp, backend=self.backend)
        return x


class UViTBlock(DiTBlock):
    """A DiT block that, with ``skip=True``, first fuses a long skip: x = skip_linear(cat([x, skip])).

    x, skip: (B, L, D); c: (B, D); context, keep as ``DiTBlock``'s -> (B, L, D).
    """

    def __init__(
        self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, skip: bool = False, mlp_norm_eps: float = 1e-6,
        text_width: int = 0, text_fusion: str = "separate",
    ):
        super().__init__(hidden_size, num_heads, mlp_ratio, mlp_norm_eps, text_width, text_fusion)
        self.skip_linear = nn.Linear(2 * hidden_size, hidden_size) if checks.flag("skip", skip) else None

    def forward(self, x: torch.Tensor, c: torch.Tensor, skip: Optional[torch.Tensor] = None,
                context: Optional[torch.Tensor] = None, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        return super().forward(x, c, context, keep)


class FinalLayer(nn.Module):
    """adaLN (shift, scale) then a linear to patch pixels: (B, L, D), c (B, D) -> (B, L, p*p*C_out)."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.backend: Optional[str] = None
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        for name, value in (("hidden_size", hidden_size), ("patch_size", patch_size), ("out_channels", out_channels)):
            checks.integer(name, value)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        x = ops.layernorm_modulate(x, shift, scale, eps=self.norm_final.eps, backend=self.backend)
        return self.linear(x)


class DiT(DiffusionBackbone):
    """Diffusion Transformer (Peebles & Xie, 2023), parameter-compatible with the official code.

    ``model(x, t, y)``: x (B, in_channels, input_size, input_size) latents, t (B,) timesteps,
    y (B,) integer labels in [0, num_classes] (``num_classes`` is the null class when
    ``class_dropout_prob > 0``) -> (B, out_channels, input_size, input_size), where
    ``out_channels = 2 * in_channels`` with ``learn_sigma`` (eps then the variance channels).

    The frozen sin-cos ``pos_embed`` (1, L, D) is built for ``input_size`` at construction, as
    in DiT, so the model runs at that latent size only.

    Text (``text_dim`` > 0, the text encoder's width): ``model(x, t, y, encoder_hidden_states,
    encoder_attention_mask, pooled_text)``; the pooled text is added to c, the sequence
    (projected to ``text_width``, default ``hidden_size``) enters every block through
    ``text_fusion`` ("separate" MHCA or "fused"). ``num_classes=0`` builds a text-only model
    (y must be None). ``text_dim=0`` is exactly the class-only DiT (same modules and keys).

    ``timestep_freq_shift`` (int) and ``mlp_norm_eps`` (float) default to DiT's arithmetic (0 and
    1e-6); diffusers' ``DiTTransformer2DModel`` computes with 1 and its ``norm_eps`` (1e-5 by
    default), and ``dit_from_diffusers`` sets them so that a converted model matches it exactly.
    """

    _repeated_blocks = ["DiTBlock"]
    _no_split_modules = ["DiTBlock", "PatchEmbed", "FinalLayer", "TimestepEmbedder", "LabelEmbedder", "TextEmbedder"]

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
        timestep_freq_shift: int = 0,
        mlp_norm_eps: float = 1e-6,
        text_dim: int = 0,
        text_width: Optional[int] = None,
        text_fusion: str = "separate",
    ):
        super().__init__()
        for name, value in (("input_size", input_size), ("patch_size", patch_size), ("in_channels", in_channels),
                            ("hidden_size", hidden_size), ("depth", depth), ("num_heads", num_heads)):
            checks.integer(name, value)
        num_classes, text_dim, text_width, text_fusion = text_settings(
            num_classes, text_dim, text_width, text_fusion, hidden_size, True, type(self).__name__)
        checks.positive_float("mlp_ratio", mlp_ratio)
        checks.probability("class_dropout_prob", class_dropout_prob)
        checks.flag("learn_sigma", learn_sigma)
        checks.divisible("hidden_size", hidden_size, "num_heads", num_heads)
        if input_size % patch_size:
            raise ValueError(f"input_size ({input_size}) must be divisible by patch_size ({patch_size})")
        if hidden_size % 4:
            # the 2-D sin-cos embedding spends hidden/2 features per axis, as [sin, cos] pairs
            raise ValueError(f"hidden_size must be divisible by 4, got {hidden_size}")
        self.input_size = input_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.learn_sigma = learn_sigma
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.num_classes = num_classes
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.depth = depth
        self.text_dim, self.text_width, self.text_fusion = text_dim, text_width, text_fusion
        text_width = text_width if text_dim else 0  # what the blocks read: 0 builds no text module

        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size, freq_shift=timestep_freq_shift)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob) if num_classes else None
        self.text_embedder = TextEmbedder(text_dim, hidden_size, text_width) if text_dim else None
        self.grid_size = input_size // patch_size
        num_patches = self.grid_size**2
        # A frozen Parameter rather than a buffer, so that the state dict is exactly DiT's.
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList(self._make_blocks(depth, hidden_size, num_heads, mlp_ratio, mlp_norm_eps,
                                                      text_width, text_fusion))
        self.final_layer = self._make_final_layer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def _make_blocks(
        self, depth: int, hidden_size: int, num_heads: int, mlp_ratio: float, mlp_norm_eps: float,
        text_width: int, text_fusion: str,
    ) -> List[nn.Module]:
        return [DiTBlock(hidden_size, num_heads, mlp_ratio, mlp_norm_eps, text_width, text_fusion) for _ in range(depth)]

    def _make_final_layer(self, hidden_size: int, patch_size: int, out_channels: int) -> nn.Module:
        return FinalLayer(hidden_size, patch_size, out_channels)

    def initialize_weights(self) -> None:
        """DiT's initialisation (official HEAD): xavier Linears with zero bias, patch embed as a flat
        Linear with zero bias, normal(0.02) label table and timestep MLP, and zeroed adaLN and
        output layers, so that every block starts as the identity and the model outputs zeros."""

        def _basic_init(module):
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)

        self.apply(_basic_init)

        pos = sincos_2d(self.hidden_size, self.grid_size, self.grid_size)
        self.pos_embed.data.copy_(pos.unsqueeze(0))

        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.constant_(self.x_embedder.proj.bias, 0)

        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        zero_init_text(self)

        for block in self.blocks:
            nn.init.constant_(block.adaLN_modulation[-1].weight, 0)
            nn.init.constant_(block.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].weight, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.linear.weight, 0)
        nn.init.constant_(self.final_layer.linear.bias, 0)

    def check_size(self, H: int, W: int) -> None:
        if (H, W) != (self.input_size, self.input_size):
            raise ValueError(
                f"{type(self).__name__} was built for {self.input_size}x{self.input_size} latents, got "
                f"{H}x{W}: its sin-cos pos_embed is fixed at construction (as in the official DiT); "
                + (f"build the model with input_size={H}" if H == W else "it runs on square latents only")
            )

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, p*p*C_out) -> (B, C_out, H, W), each token's features laid out as (p, p, C_out)."""
        c, p, h = self.out_channels, self.patch_size, self.grid_size
        x = x.reshape(x.shape[0], h, h, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, h * p)

    def _run_blocks(self, x: torch.Tensor, c: torch.Tensor, text: Optional[TextInputs]) -> torch.Tensor:
        context, keep = (None, None) if text is None else (text.context, text.keep)
        for block in self.blocks:
            x = self.run_block(block, x, c, context, keep)
        return x

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
        c, text = self.condition_vector(x, t, y, encoder_hidden_states, encoder_attention_mask, pooled_text)
        x = self.x_embedder(x) + self.pos_embed  # (B, L, D), L = H * W / p**2
        x = self._run_blocks(x, c, text)
        x = self.final_layer(x, c)  # (B, L, p*p*C_out)
        return self._output(self.unpatchify(x), return_dict)


class UViT(DiT):
    """DiT with U-ViT long skips: the X-Swin paper's "UDiT" baseline. Same call as ``DiT``.

    Blocks ``i < encoders_n`` push their outputs; blocks ``i > decoders_n`` pop one and fuse it
    through ``skip_linear`` (so depth 12 has five skip pairs around two middle blocks), with
    ``encoders_n = (depth - 1) // 2`` and ``decoders_n = encoders_n + (depth + 1) % 2``: the
    original code's indexing, which pairs block i with block depth-1-i for every depth.
    """

    _repeated_blocks = ["UViTBlock"]
    _no_split_modules = ["UViTBlock", "PatchEmbed", "FinalLayer", "TimestepEmbedder", "LabelEmbedder", "TextEmbedder"]

    @staticmethod
    def skip_pairing(depth: int) -> Tuple[int, int]:
        """(encoders_n, decoders_n) for ``depth`` blocks (see the class docstring)."""
        encoders_n = (depth - 1) // 2
        return encoders_n, encoders_n + (depth + 1) % 2

    def _make_blocks(
        self, depth: int, hidden_size: int, num_heads: int, mlp_ratio: float, mlp_norm_eps: float,
        text_width: int, text_fusion: str,
    ) -> List[nn.Module]:
        self.encoders_n, self.decoders_n = self.skip_pairing(depth)
        return [
            UViTBlock(hidden_size, num_heads, mlp_ratio, skip=i > self.decoders_n, mlp_norm_eps=mlp_norm_eps,
                      text_width=text_width, text_fusion=text_fusion)
            for i in range(depth)
        ]

    def _run_blocks(self, x: torch.Tensor, c: Optional[torch.Tensor], text: Optional[TextInputs]) -> torch.Tensor:
        context, keep = (None, None) if text is None else (text.context, text.keep)
        skips: List[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            x = self.run_block(block, x, c, skips.pop() if i > self.decoders_n else None, context, keep)
            if i < self.encoders_n:
                skips.append(x)
        return x


_SIZES = {
    "S": dict(depth=12, hidden_size=384, num_heads=6),
    "B": dict(depth=12, hidden_size=768, num_heads=12),
    "L": dict(depth=24, hidden_size=1024, num_heads=16),
    "XL": dict(depth=28, hidden_size=1152, num_heads=16),
}

DIT_PRESETS: Dict[str, Tuple[type, dict]] = {
    f"{cls.__name__}-{size}/{p}": (cls, dict(**cfg, patch_size=p, input_size=32, num_classes=1000))
    for cls in (DiT, UViT)
    for size, cfg in _SIZES.items()
    for p in (2, 4, 8)
}
