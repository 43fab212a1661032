"""The captions of a training set as embeddings: every distinct caption encoded once, each image
holding the rows of its captions; a batch draws one caption per image and drops some to the null
caption (classifier-free guidance's unconditional training)."""
from typing import List, Sequence

import torch

from .embeddings import TextEmbeddings


class CaptionTable:
    """``embeddings``: the distinct captions' :class:`TextEmbeddings` (N rows, on the CPU);
    ``captions``: those N captions (str); ``rows``: per image, the row indices of its captions
    (at least one each)."""

    def __init__(self, embeddings: TextEmbeddings, captions: Sequence[str], rows: Sequence[Sequence[int]]):
        if len(embeddings) != len(captions):
            raise ValueError(f"{len(embeddings)} embeddings for {len(captions)} captions")
        if any(not r for r in rows):
            raise ValueError("every image needs at least one caption")
        self.embeddings, self.captions = embeddings, list(captions)
        self.rows: List[List[int]] = [list(r) for r in rows]
        width = max(len(r) for r in self.rows)
        # (images, width) caption rows, padded; a draw indexes below each image's own count
        self._table = torch.tensor([r + [r[0]] * (width - len(r)) for r in self.rows], dtype=torch.long)
        self._counts = torch.tensor([len(r) for r in self.rows], dtype=torch.long)

    @property
    def dim(self) -> int:
        return self.embeddings.dim

    def draw(self, images: torch.Tensor, dropout: float, device: torch.device, dtype: torch.dtype) -> TextEmbeddings:
        """One caption per image of ``images`` ((B,) int image indices), uniformly among its own
        captions, each replaced by the null caption with probability ``dropout``; on ``device`` in
        ``dtype``. Draws from torch's global CPU generator (checkpointed, so a resumed run draws
        the same)."""
        images = images.cpu().long()
        pick = (torch.rand(len(images)) * self._counts[images]).long()
        emb = self.embeddings[self._table[images, pick]]
        if dropout > 0:
            emb = emb.with_null_rows(torch.rand(len(images)) < dropout)
        return emb.to(device, dtype)

    def of_captions(self, indices: Sequence[int], device: torch.device, dtype: torch.dtype) -> TextEmbeddings:
        """The embeddings of captions ``indices`` (rows of ``captions``), on ``device`` in ``dtype``."""
        return self.embeddings[list(indices)].to(device, dtype)
