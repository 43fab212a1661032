"""Zalando's Fashion-MNIST from its IDX files: 70,000 28x28 grey images of 10 clothing classes.

The files are the release's four gzipped IDX files (``train-images-idx3-ubyte.gz`` and the
others); Debian's package ``dataset-fashion-mnist`` installs them under
``/usr/share/datasets/fashion-mnist/``. The reader is gzip + numpy, no further dependency.
The official split is kept: the 60,000 training images train, the 10,000 test images are the
held-out set.

Size: 32 by default, the 28x28 images padded with 2 background pixels on each side, so that a
patch of 4 (or 2) tiles them and the token grid is a power of two (8x8 at patch 4: the digits'
and the X-Swin paper's grid). 28 keeps the native images; any other size resamples the native
images bilinearly (antialiased when shrinking).
"""
import gzip
import os
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from .folders import DataError
from .grey_images import GreyImageDataset

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
NATIVE_SIZE = 28
DEFAULT_SIZE = 32
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
INSTALL_HINT = "install them with `sudo apt-get install dataset-fashion-mnist`, or pass --data-dir DIR holding Zalando's *-ubyte.gz files"
_IDX_UBYTE = 0x08  # the IDX type code of unsigned bytes


def read_idx(path: os.PathLike) -> np.ndarray:
    """The uint8 array of an IDX file (gzipped if its name ends in .gz): shape from its header.
    DataError if the file is not an unsigned-byte IDX file or is truncated."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE or raw[3] == 0:
        raise DataError(f"{path} is not an unsigned-byte IDX file (header {raw[:4].hex()})")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    size = int(np.prod(shape))
    offset = 4 + 4 * ndim
    if len(raw) - offset != size:
        raise DataError(f"{path}: header says {shape} ({size} bytes), the file holds {len(raw) - offset}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def find_fashion_mnist(data_dir: Optional[os.PathLike] = None) -> Path:
    """The folder holding the four IDX files: ``data_dir``, else :data:`DEFAULT_ROOT`.
    DataError, with how to install them, if a file is missing."""
    root = Path(data_dir).expanduser() if data_dir else Path(DEFAULT_ROOT)
    missing = [name for pair in FILES.values() for name in pair if not (root / name).is_file()]
    if missing:
        raise DataError(f"Fashion-MNIST not found in {root} (missing {', '.join(missing)}): {INSTALL_HINT}")
    return root.resolve()


def load_split(root: os.PathLike, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """(uint8 (N, 28, 28) images, int64 (N,) labels) of ``split`` "train" or "test" under ``root``."""
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images_name, labels_name = FILES[split]
    images, labels = read_idx(Path(root) / images_name), read_idx(Path(root) / labels_name)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{root}: {split} images {images.shape} and labels {labels.shape} do not match")
    if labels.size and labels.max() >= len(CLASSES):
        raise DataError(f"{root}: {split} labels reach {labels.max()}, Fashion-MNIST has {len(CLASSES)} classes")
    return images, labels.astype(np.int64)


def to_size(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """float (N, 1, 28, 28) images in [-1, 1] at ``image_size``: 32 pads with background (-1),
    28 keeps them, anything else resamples bilinearly."""
    if image_size == DEFAULT_SIZE and images.shape[-1] == NATIVE_SIZE:
        pad = (DEFAULT_SIZE - NATIVE_SIZE) // 2
        return torch.nn.functional.pad(images, (pad, pad, pad, pad), value=-1.0)
    if image_size == images.shape[-1]:
        return images
    return torch.nn.functional.interpolate(images, size=(image_size, image_size), mode="bilinear",
                                           align_corners=False, antialias=image_size < images.shape[-1])


class FashionMNISTDataset(GreyImageDataset):
    """One split of Fashion-MNIST. Items are (x, y): x float32 (1, S, S) in [-1, 1], y an int label.

    ``root`` (path or None): the folder of the IDX files (None: :data:`DEFAULT_ROOT`); ``split``:
    "train" (60,000) or "test" (10,000); ``indices`` (sequence of int or None): a subset of the
    split; ``image_size`` S: 32 (padded, default), 28 (native) or another size (resampled).
    Indices ``i + len(self)`` are flipped (see :mod:`.sampler`).
    """

    kind = "fashion-mnist"

    def __init__(self, root: Optional[os.PathLike] = None, split: str = "train",
                 indices: Optional[Sequence[int]] = None, image_size: int = DEFAULT_SIZE):
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        self.root, self.split, self.image_size = find_fashion_mnist(root), split, image_size
        images, labels = load_split(self.root, split)
        self.all_targets = labels.tolist()
        self.indices = list(range(len(labels))) if indices is None else [int(i) for i in indices]
        if any(not 0 <= i < len(labels) for i in self.indices):
            raise ValueError(f"indices must lie in [0, {len(labels)}) for the {split} split")
        chosen = torch.from_numpy(images[self.indices].copy()).unsqueeze(1).float() / 127.5 - 1
        self.images = to_size(chosen, image_size).contiguous()
        self.labels = torch.from_numpy(labels[self.indices].copy())
        self.classes = list(CLASSES)
