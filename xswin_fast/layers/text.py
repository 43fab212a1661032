"""Text conditioning shared by every family: the input checks, the model-level ``TextEmbedder``
(pooled vector into the time/adaLN path, the token sequence projected to the context width) and
the separate multi-head cross-attention sub-block ``TextCrossAttention`` (MHCA).

The null caption (classifier-free guidance's unconditional input) is a sample whose
``encoder_attention_mask`` row keeps no token: its pooled vector is the learned ``null_text``
and every MHCA adds exactly zero for it. Masked tokens contribute exactly nothing, even when
they hold Inf or NaN: they are replaced by zeros with ``torch.where`` before anything reads them
and their keys are excluded from the softmax (docs/backbones.md, "Text conditioning").
"""
from typing import NamedTuple, Optional

import torch
import torch.nn as nn

from . import checks
from .attention import masked_attention, masked_context

FUSIONS = ("separate", "fused")


class TextInputs(NamedTuple):
    """What the blocks of a text model receive: ``pooled`` (B, c_dim) for the time/adaLN path,
    ``context`` (B, L, text_width) for the attention, ``keep`` (B, L) bool key-padding mask
    (True: the token is attended to) or None when every token is kept."""

    pooled: torch.Tensor
    context: torch.Tensor
    keep: Optional[torch.Tensor]


def text_settings(num_classes, text_dim, text_width, text_fusion, default_width: int, fused_supported: bool,
                  family: str):
    """Checked (num_classes, text_dim, text_width, text_fusion) of a family's constructor.

    num_classes (int) >= 1, or 0 for a text-only model (text_dim > 0); text_dim (int) >= 0, 0 for
    a class-only model; text_width (int or None) the width of the projected text sequence (None:
    ``default_width``, the model's conditioning width); text_fusion "separate" or "fused",
    "fused" only where ``fused_supported`` (a global self-attention to add the text keys to).
    """
    text_dim = checks.integer("text_dim", text_dim, minimum=0)
    num_classes = checks.integer("num_classes", num_classes, minimum=0 if text_dim else 1)
    if text_fusion not in FUSIONS:
        raise ValueError(f"text_fusion must be one of {FUSIONS}, got {text_fusion!r}")
    if text_fusion == "fused" and not fused_supported:
        raise ValueError(
            f"text_fusion='fused' is not defined for {family}: its self-attention runs in windows "
            f"(ops.window_attention), which hold image tokens only; use text_fusion='separate'"
        )
    text_width = default_width if text_width is None else checks.integer("text_width", text_width)
    return num_classes, text_dim, text_width, text_fusion


def check_text(text_dim: int, B: int, device: torch.device, encoder_hidden_states, encoder_attention_mask,
               pooled_text) -> Optional[torch.Tensor]:
    """Raise TypeError/ValueError naming the argument unless the text inputs fit a model built
    with ``text_dim`` (0: class-only, every text input must be None) for a batch of B on
    ``device``. Returns the mask as (B, L) bool (True: kept), or None when every token is kept."""
    given = [n for n, v in (("encoder_hidden_states", encoder_hidden_states),
                            ("encoder_attention_mask", encoder_attention_mask), ("pooled_text", pooled_text))
             if v is not None]
    if not text_dim:
        if given:
            raise ValueError(f"{given[0]} was given to a class-only model (built with text_dim=0); "
                             f"build the model with text_dim = the text encoder's width")
        return None
    ehs = encoder_hidden_states
    if ehs is None:
        raise ValueError(f"encoder_hidden_states is required: the model was built with text_dim={text_dim} "
                         f"(the null caption is a row of encoder_attention_mask that keeps no token)")
    if not isinstance(ehs, torch.Tensor) or not ehs.is_floating_point():
        raise TypeError(f"encoder_hidden_states must be a floating-point tensor, got "
                        f"{getattr(ehs, 'dtype', type(ehs).__name__)}")
    if ehs.dim() != 3 or ehs.shape[0] != B or ehs.shape[2] != text_dim or ehs.shape[1] < 1:
        raise ValueError(f"encoder_hidden_states must have shape (B, L >= 1, text_dim) = ({B}, L, {text_dim}), "
                         f"got {tuple(ehs.shape)}")
    keep = _check_mask(encoder_attention_mask, ehs.shape[:2])
    if pooled_text is not None:
        if not isinstance(pooled_text, torch.Tensor) or not pooled_text.is_floating_point():
            raise TypeError(f"pooled_text must be a floating-point tensor, got "
                            f"{getattr(pooled_text, 'dtype', type(pooled_text).__name__)}")
        if pooled_text.shape != (B, text_dim):
            raise ValueError(f"pooled_text must have shape (B, text_dim) = ({B}, {text_dim}), "
                             f"got {tuple(pooled_text.shape)}")
    for name, v in (("encoder_hidden_states", ehs), ("encoder_attention_mask", keep), ("pooled_text", pooled_text)):
        if v is not None and v.device != device:
            raise ValueError(f"{name} must be on x's device {device}, got {v.device}")
    return keep


def _check_mask(mask, shape) -> Optional[torch.Tensor]:
    """encoder_attention_mask (B, L) bool, or integer holding only 0 and 1 (checked on the CPU) -> bool."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.is_floating_point() or mask.is_complex():
        raise TypeError(f"encoder_attention_mask must be a bool or integer tensor (True/1 = keep), got "
                        f"{getattr(mask, 'dtype', type(mask).__name__)}")
    if mask.shape != shape:
        raise ValueError(f"encoder_attention_mask must have shape (B, L) = {tuple(shape)}, got {tuple(mask.shape)}")
    if mask.dtype == torch.bool:
        return mask
    if mask.device.type == "cpu" and not torch.compiler.is_compiling() and bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError(f"encoder_attention_mask must hold only 0 and 1, got values {sorted(set(mask.unique().tolist()))}")
    return mask != 0


class TextEmbedder(nn.Module):
    """Text encoder outputs -> ``TextInputs``: the pooled vector projected to the conditioning
    width, the token sequence projected to ``width`` (the papers' "text encoder width").

    ``pooled_proj`` is zero-initialised, so a text model starts with the class model's
    conditioning vector; ``null_text`` (text_dim,) is the pooled vector of the null caption.
    """

    def __init__(self, text_dim: int, c_dim: int, width: int):
        super().__init__()
        text_dim, c_dim, width = (checks.integer(n, v) for n, v in (("text_dim", text_dim), ("c_dim", c_dim),
                                                                      ("text_width", width)))
        self.null_text = nn.Parameter(torch.zeros(text_dim))
        self.pooled_proj = nn.Linear(text_dim, c_dim)
        self.context_proj = nn.Linear(text_dim, width)
        self.zero_init()

    def zero_init(self) -> None:
        nn.init.zeros_(self.pooled_proj.weight)
        nn.init.zeros_(self.pooled_proj.bias)

    def forward(self, encoder_hidden_states: torch.Tensor, keep: Optional[torch.Tensor],
                pooled_text: Optional[torch.Tensor] = None) -> TextInputs:
        """encoder_hidden_states (B, L, text_dim) any float dtype, keep (B, L) bool or None,
        pooled_text (B, text_dim) or None (the mean of the kept tokens) -> ``TextInputs``, in the
        model's compute dtype."""
        # null_text is this module's own parameter (its Linears' weights may hold a storage dtype
        # outside their forward under diffusers' layerwise casting): the model's compute dtype
        dtype = self.null_text.dtype
        ehs = masked_context(encoder_hidden_states, keep, dtype)
        if pooled_text is None:
            count = ehs.shape[1] if keep is None else keep.sum(1, keepdim=True).clamp(min=1).to(dtype)
            pooled_text = ehs.sum(1) / count
        pooled_text = pooled_text.to(dtype)
        if keep is not None:
            pooled_text = torch.where(keep.any(1, keepdim=True), pooled_text, self.null_text.to(dtype))
        return TextInputs(self.pooled_proj(pooled_text), self.context_proj(ehs), keep)


class TextCrossAttention(nn.Module):
    """The separate MHCA sub-block's branch: image tokens (B, ..., dim) attend to the text context
    (B, L, context_dim) -> (B, ..., dim), to be added to the tokens (``x + branch``).

        branch = proj(MHA(q = q(LN(x)), k, v = kv(context), key-padding mask keep))

    ``proj`` is zero-initialised: a block with this sub-block starts as the same block without it
    (the class model's function), as PixArt-alpha initialises its cross-attention. A sample whose
    mask keeps no token (the null caption) gets an exactly zero branch.
    """

    def __init__(self, dim: int, num_heads: int, context_dim: int, eps: float = 1e-6):
        super().__init__()
        for name, value in (("dim", dim), ("num_heads", num_heads), ("context_dim", context_dim)):
            checks.integer(name, value)
        checks.divisible("dim", dim, "num_heads", num_heads)
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(dim, eps=checks.positive_float("eps", eps))
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.zero_init()

    def zero_init(self) -> None:
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor, keep: Optional[torch.Tensor]) -> torch.Tensor:
        shape, C = x.shape, x.shape[-1]
        B, L = context.shape[:2]
        h, d = self.num_heads, C // self.num_heads
        q = self.q(self.norm(x.reshape(B, -1, C))).view(B, -1, h, d).transpose(1, 2)  # (B, h, N, d)
        kv = self.kv(masked_context(context, keep, x.dtype)).view(B, L, 2, h, d).permute(2, 0, 3, 1, 4)
        o = masked_attention(q, kv[0], kv[1], keep)
        out = self.proj(o.transpose(1, 2).reshape(B, -1, C))
        if keep is not None:
            out = torch.where(keep.any(1)[:, None, None], out, 0.0)
        return out.view(shape)


def zero_init_text(model: nn.Module) -> None:
    """Re-apply the zero initialisation of every text module of ``model`` (after a family's
    ``initialize_weights`` re-initialised all its Linears)."""
    for m in model.modules():
        if isinstance(m, (TextEmbedder, TextCrossAttention)):
            m.zero_init()
