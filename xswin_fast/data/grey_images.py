"""The in-memory dataset of one-channel images shared by the built-in digits and Fashion-MNIST."""
from typing import List

import torch
from torch.utils.data import Dataset

from .sampler import unflip_index


class GreyImageDataset(Dataset):
    """Items (x, y) of images held in memory: x float32 (1, S, S) in [-1, 1], y an int label.

    A subclass sets ``images`` (float32 (N, 1, S, S) in [-1, 1]), ``labels`` (int64 (N,)),
    ``indices`` (the N source indices it holds), ``all_targets`` (the labels of the whole source),
    ``classes`` and ``image_size``. Indices ``i + len(self)`` are flipped (see :mod:`.sampler`).
    """

    channels = 1
    images: torch.Tensor
    labels: torch.Tensor
    indices: List[int]

    @property
    def targets(self) -> List[int]:
        return self.labels.tolist()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        i, flip = unflip_index(index, len(self))
        x = self.images[i]
        return (x.flip(-1) if flip else x), int(self.labels[i])

    def uint8_images(self) -> torch.Tensor:
        """Every item as uint8 (N, 1, S, S)."""
        return ((self.images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
