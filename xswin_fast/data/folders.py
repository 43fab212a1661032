"""Images in ImageFolder layout (``root/<class>/**/<image>``), read with Pillow (no torchvision)."""
import logging
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .sampler import unflip_index

logger = logging.getLogger(__name__)

class DataError(ValueError):
    """Training data that cannot be used, e.g. a folder in which no image is readable."""


IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def center_crop_arr(pil_image, image_size: int) -> np.ndarray:
    """ADM's / DiT's center crop of a PIL image: box-downsample by 2 while large, bicubic-resize,
    crop the centre. Returns an (image_size, image_size[, C]) uint8 array."""
    from PIL import Image

    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y : crop_y + image_size, crop_x : crop_x + image_size]


def uint8_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 array -> (3, H, W) float32 tensor in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float() / 127.5 - 1


def scan_image_folder(root: str) -> Tuple[List[str], List[Tuple[str, int]]]:
    """ImageFolder layout: ``root/<class>/**/<image>``. Returns (classes, [(path, label)])."""
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"--data {root!r} is not a directory")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise FileNotFoundError(f"--data {root!r} has no class subfolders (expected root/<class>/<images>)")
    samples = []
    for label, cls in enumerate(classes):
        for dirpath, dirnames, filenames in sorted(os.walk(os.path.join(root, cls), followlinks=True)):
            dirnames.sort()
            for fn in sorted(filenames):
                if fn.lower().endswith(IMG_EXTENSIONS) and not fn.startswith("."):
                    samples.append((os.path.join(dirpath, fn), label))
    if not samples:
        raise FileNotFoundError(f"--data {root!r} holds no images with extensions {IMG_EXTENSIONS}")
    return classes, samples


class ImageFolderDataset(Dataset):
    """Images in ImageFolder layout, center-cropped to ``image_size``: items (x, y), x a
    (3, image_size, image_size) float32 tensor in [-1, 1], y an int label.

    ``indices`` selects a subset of the scanned images; ``scan`` reuses a
    :func:`scan_image_folder` result. Indices ``i + len(self)`` are flipped (see :mod:`.sampler`).
    An image that cannot be read is reported (once per file) and replaced by the next readable
    item, so one bad file never stops a run; the replacement is deterministic.
    """

    kind = "folder"
    channels = 3

    def __init__(self, root: str, image_size: int, indices: Optional[Sequence[int]] = None, scan=None):
        self.root = os.path.abspath(os.path.expanduser(root))
        self.image_size = image_size
        self.classes, all_samples = scan if scan is not None else scan_image_folder(root)
        self.indices = list(range(len(all_samples))) if indices is None else [int(i) for i in indices]
        self.samples = [all_samples[i] for i in self.indices]
        self._reported = set()

    @property
    def targets(self) -> List[int]:
        return [lab for _, lab in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def load_uint8(self, i: int) -> np.ndarray:
        """(H, W, 3) uint8 center crop of item ``i``; raises on unreadable files."""
        from PIL import Image

        with Image.open(self.samples[i][0]) as im:
            im.load()
            arr = center_crop_arr(im.convert("RGB"), self.image_size)
        if arr.shape != (self.image_size, self.image_size, 3):
            raise ValueError(f"cropped to {arr.shape}")
        return arr

    def report(self, i: int, exc: Exception) -> None:
        path = self.samples[i][0]
        if path not in self._reported:
            self._reported.add(path)
            logger.warning("skipping unreadable image %s (%s: %s)", path, type(exc).__name__, exc)

    def readable(self, i: int) -> Tuple[int, np.ndarray]:
        """The first readable item at or after ``i`` (wrapping) and its pixels."""
        n = len(self)
        for k in range(n):
            j = (i + k) % n
            try:
                return j, self.load_uint8(j)
            except Exception as exc:  # PIL raises many types for broken files
                self.report(j, exc)
        raise DataError(f"--data {self.root}: none of its {n} images is readable (see the warnings above)")

    def __getitem__(self, index: int):
        i, flip = unflip_index(index, len(self))
        j, arr = self.readable(i)
        if flip:
            arr = arr[:, ::-1]
        return uint8_to_tensor(arr), self.samples[j][1]
