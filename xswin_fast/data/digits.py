"""scikit-learn's bundled handwritten digits: the built-in dataset (no download)."""
from typing import Optional, Sequence

import torch

from .grey_images import GreyImageDataset

DIGITS_LEVELS = 16  # sklearn's digits hold integers 0..16


class DigitsDataset(GreyImageDataset):
    """scikit-learn's bundled handwritten digits: 1,797 8x8 grayscale images, 10 classes.

    Items are (x, y): x (1, S, S) float32 in [-1, 1] (0..16 mapped linearly), y an int label.
    ``indices`` selects a subset (e.g. the train split) of the 1,797 images; ``image_size`` S
    other than 8 resamples them bilinearly. Indices ``i + len(self)`` are flipped (see
    :mod:`.sampler`).
    """

    kind = "digits"

    def __init__(self, indices: Optional[Sequence[int]] = None, image_size: int = 8):
        from sklearn.datasets import load_digits

        d = load_digits()
        images = torch.from_numpy(d.images).float() / DIGITS_LEVELS * 2 - 1
        self.image_size = image_size
        if image_size != 8:  # bilinear up/down-sampling of the native 8x8 images
            images = torch.nn.functional.interpolate(
                images.unsqueeze(1), size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=image_size < 8
            ).squeeze(1)
        labels = torch.from_numpy(d.target).long()
        self.all_targets = labels.tolist()
        self.classes = [str(i) for i in range(10)]
        self.indices = list(range(len(labels))) if indices is None else [int(i) for i in indices]
        self.images = images[self.indices].unsqueeze(1).contiguous()
        self.labels = labels[self.indices]

