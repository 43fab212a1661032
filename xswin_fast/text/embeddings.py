"""A batch of captions as a text-conditioned backbone takes them: hidden states, a bool mask and a
pooled vector (diffusers' ``encoder_hidden_states``, ``encoder_attention_mask`` and the pooled
text of ``model(x, t, encoder_hidden_states=..., encoder_attention_mask=..., pooled_text=...)``).

The **null caption** (the unconditional input of classifier-free guidance) is a row whose mask is
all False: the backbone then uses its learned null pooled vector and its cross-attention adds
nothing. :meth:`TextEmbeddings.null` builds such rows (zeros under an all-False mask).
"""
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Union

import torch


@dataclass
class TextEmbeddings:
    """``hidden`` (B, L, D) floating, ``mask`` (B, L) bool (True = a real token), ``pooled`` (B, D)
    of hidden's dtype. Indexing (an int tensor, a slice or a list of ints) selects rows."""

    hidden: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    def __post_init__(self):
        h, m, p = self.hidden, self.mask, self.pooled
        if h.dim() != 3 or not h.is_floating_point():
            raise ValueError(f"hidden must be a floating (B, L, D) tensor, got {h.dtype} {tuple(h.shape)}")
        if m.dtype != torch.bool or m.shape != h.shape[:2]:
            raise ValueError(f"mask must be a bool (B, L) = {tuple(h.shape[:2])} tensor, got {m.dtype} {tuple(m.shape)}")
        if p.shape != (h.shape[0], h.shape[2]):
            raise ValueError(f"pooled must have shape (B, D) = {(h.shape[0], h.shape[2])}, got {tuple(p.shape)}")

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def __getitem__(self, index: Union[slice, torch.Tensor, Sequence[int]]) -> "TextEmbeddings":
        if not isinstance(index, slice):
            index = torch.as_tensor(index, dtype=torch.long, device=self.hidden.device)
        return TextEmbeddings(self.hidden[index], self.mask[index], self.pooled[index])

    @property
    def dim(self) -> int:
        """D, the text width (a backbone's ``text_dim``)."""
        return self.hidden.shape[2]

    @property
    def device(self) -> torch.device:
        return self.hidden.device

    def to(self, device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None) -> "TextEmbeddings":
        """On ``device``, the floating tensors in ``dtype`` (the mask stays bool)."""
        return TextEmbeddings(self.hidden.to(device, dtype), self.mask.to(device), self.pooled.to(device, dtype))

    def padded(self, length: int) -> "TextEmbeddings":
        """The same rows with L padded to ``length`` (>= L) by masked zero tokens."""
        extra = length - self.hidden.shape[1]
        if extra < 0:
            raise ValueError(f"cannot pad {self.hidden.shape[1]} tokens to {length}")
        if extra == 0:
            return self
        hidden = torch.nn.functional.pad(self.hidden, (0, 0, 0, extra))
        return TextEmbeddings(hidden, torch.nn.functional.pad(self.mask, (0, extra), value=False), self.pooled)

    def with_null_rows(self, null: torch.Tensor) -> "TextEmbeddings":
        """These rows, with those where ``null`` (B,) bool is True replaced by the null caption."""
        keep = ~null.to(self.device)
        return TextEmbeddings(self.hidden * keep[:, None, None], self.mask & keep[:, None], self.pooled * keep[:, None])

    def model_kwargs(self) -> Dict[str, torch.Tensor]:
        """The backbone's keyword arguments."""
        return {"encoder_hidden_states": self.hidden, "encoder_attention_mask": self.mask, "pooled_text": self.pooled}

    @staticmethod
    def cat(parts: Sequence["TextEmbeddings"]) -> "TextEmbeddings":
        """Rows of ``parts`` one after another, padded to the longest L."""
        length = max(p.hidden.shape[1] for p in parts)
        parts = [p.padded(length) for p in parts]
        return TextEmbeddings(torch.cat([p.hidden for p in parts]), torch.cat([p.mask for p in parts]),
                              torch.cat([p.pooled for p in parts]))

    @staticmethod
    def null(n: int, dim: int, length: int = 1, dtype: torch.dtype = torch.float32,
             device: Optional[torch.device] = None) -> "TextEmbeddings":
        """``n`` null captions of ``length`` masked tokens of width ``dim``."""
        return TextEmbeddings(torch.zeros(n, length, dim, dtype=dtype, device=device),
                              torch.zeros(n, length, dtype=torch.bool, device=device),
                              torch.zeros(n, dim, dtype=dtype, device=device))
