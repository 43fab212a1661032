"""Captioned image folders in Hugging Face's ImageFolder convention, and a writer that makes one
from the digits or Fashion-MNIST.

A folder holds images and a ``metadata.jsonl``: one JSON object per line with ``file_name`` (the
image's path relative to the folder) and ``text``, a caption or a list of captions. Several
captions per image are allowed both ways: ``text`` as a list, or several lines with the same
``file_name`` (their captions are joined, in order). Other keys (e.g. ``label``) are kept in
:attr:`CaptionedFolder.extra` and otherwise ignored. Images that no line names are not used.

Images are grey (one channel) when the first listed image is grey (PIL mode L, I or I;16),
otherwise RGB; every image is converted to that.
"""
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from torch.utils.data import Dataset

from .folders import DataError, ImageFolderDataset, center_crop_arr

METADATA = "metadata.jsonl"
GREY_MODES = ("L", "I", "I;16", "1")


@dataclass
class CaptionedFolder:
    """A read ``metadata.jsonl``: ``root`` (absolute), per image its ``files`` (relative paths, in
    first-mention order), ``captions`` (a list of str each) and ``extra`` (its other keys)."""

    root: str
    files: List[str]
    captions: List[List[str]]
    extra: List[Dict[str, Any]] = field(default_factory=list)

    def distinct_captions(self) -> List[str]:
        """Every caption once, in order of first appearance."""
        return list(dict.fromkeys(c for caps in self.captions for c in caps))


def _captions_of(value, where: str) -> List[str]:
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise DataError(f"{where}: 'text' must be a caption or a non-empty list of captions, got {value!r}")
    if any(not t.strip() for t in texts):
        raise DataError(f"{where}: empty caption (the null caption is made by caption dropout, not written)")
    return texts


def read_captioned_folder(root: str) -> CaptionedFolder:
    """Read ``root/metadata.jsonl``; DataError naming the file and line for any bad line (not
    JSON, not an object, no ``file_name`` or ``text``, a caption that is not a non-empty str, an
    image that does not exist or lies outside the folder), or when no line names an image."""
    root = os.path.abspath(os.path.expanduser(root))
    meta = Path(root) / METADATA
    if not meta.is_file():
        raise DataError(f"--captions {root}: no {METADATA} (one JSON object per line with file_name and text)")
    index: Dict[str, int] = {}
    folder = CaptionedFolder(root, [], [], [])
    with open(meta, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{meta} line {number}"
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(entry, dict) or "file_name" not in entry or "text" not in entry:
                raise DataError(f"{where}: expected an object with 'file_name' and 'text', got {line.strip()[:80]!r}")
            name = entry["file_name"]
            if not isinstance(name, str) or os.path.isabs(name) or ".." in Path(name).parts:
                raise DataError(f"{where}: file_name must be a path relative to the folder, got {name!r}")
            if not os.path.isfile(os.path.join(root, name)):
                raise DataError(f"{where}: image {name!r} does not exist in {root}")
            texts = _captions_of(entry["text"], where)
            if name not in index:
                index[name] = len(folder.files)
                folder.files.append(name)
                folder.captions.append([])
                folder.extra.append({k: v for k, v in entry.items() if k not in ("file_name", "text")})
            folder.captions[index[name]].extend(texts)
    if not folder.files:
        raise DataError(f"{meta} names no image")
    return folder


class CaptionedImageDataset(ImageFolderDataset):
    """The images of a :class:`CaptionedFolder`, center-cropped to ``image_size``: items (x, i),
    x a (C, S, S) float32 tensor in [-1, 1] (C = 1 for grey folders, else 3), i the item's image
    index in ``folder.files`` (the key of its captions). ``indices`` selects a subset; unreadable
    images are skipped as in :class:`ImageFolderDataset`; indices ``i + len(self)`` are flipped."""

    kind = "captions"

    def __init__(self, folder: CaptionedFolder, image_size: int, indices: Optional[Sequence[int]] = None):
        samples = [(os.path.join(folder.root, name), i) for i, name in enumerate(folder.files)]
        super().__init__(folder.root, image_size, indices=indices, scan=([], samples))
        self.folder = folder
        from PIL import Image

        with Image.open(samples[0][0]) as first:
            self.mode = "L" if first.mode in GREY_MODES else "RGB"
        self.channels = 1 if self.mode == "L" else 3

    def load_uint8(self, i: int) -> np.ndarray:
        """(S, S, C) uint8 center crop of item ``i``; raises on unreadable files."""
        from PIL import Image

        with Image.open(self.samples[i][0]) as im:
            im.load()
            arr = center_crop_arr(im.convert(self.mode), self.image_size)
        arr = arr[..., None] if arr.ndim == 2 else arr
        if arr.shape != (self.image_size, self.image_size, self.channels):
            raise ValueError(f"cropped to {arr.shape}")
        return arr


# captions written from class labels: several names per class, and sentence templates
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FASHION_NAMES = (
    ("a T-shirt", "a top", "a tee"), ("a pair of trousers", "trousers", "a pair of pants"),
    ("a pullover", "a sweater", "a jumper"), ("a dress", "a summer dress", "a frock"),
    ("a coat", "a winter coat", "a jacket"), ("a sandal", "a summer sandal", "an open sandal"),
    ("a shirt", "a button-up shirt", "a blouse"), ("a sneaker", "a trainer", "a running shoe"),
    ("a bag", "a handbag", "a purse"), ("an ankle boot", "a boot", "a short boot"),
)
TEMPLATES = {
    "digits": ("the handwritten digit {}", "a handwritten {}", "the number {}", "a scan of the digit {}",
               "the numeral {} written by hand", "a blurry {}"),
    "fashion-mnist": ("{}", "a photo of {}", "a grey picture of {}", "a product image of {}",
                      "a small image of {}", "a black and white photo of {}"),
}
# templates kept out of the written captions: prompts in these words were never seen in training
HELD_OUT_TEMPLATES = {
    "digits": ("a picture of the digit {}", "someone wrote the number {}"),
    "fashion-mnist": ("a catalogue picture of {}", "here is {}"),
}


def class_phrases(kind: str, label: int) -> Sequence[str]:
    """The names a caption uses for class ``label`` of ``kind`` "digits" or "fashion-mnist"."""
    if kind == "digits":
        return (DIGIT_NAMES[label], str(label))
    return FASHION_NAMES[label]


def captions_for(kind: str, label: int, templates: Sequence[str], rng: random.Random, n: int) -> List[str]:
    """``n`` distinct captions (fewer when fewer exist) of class ``label``: templates filled with
    the class's names, drawn with ``rng``."""
    options = [t.format(p) for t in templates for p in class_phrases(kind, label)]
    return rng.sample(options, min(n, len(options)))


def write_captioned_folder(out: str, images: np.ndarray, labels: Sequence[int], kind: str, captions_per_image: int = 3,
                           templates: Optional[Sequence[str]] = None, seed: int = 0) -> Path:
    """Write ``images`` (N, S, S) uint8 grey as ``out/images/NNNNNN.png`` and ``out/metadata.jsonl``
    with ``captions_per_image`` captions each (``text`` as a list) from ``labels`` (N ints) of
    ``kind`` ("digits" or "fashion-mnist") in ``templates`` (default :data:`TEMPLATES`), plus the
    label under ``label``. Returns ``out``."""
    from PIL import Image

    if kind not in TEMPLATES:
        raise ValueError(f"kind must be one of {sorted(TEMPLATES)}, got {kind!r}")
    if images.ndim != 3 or images.dtype != np.uint8 or len(images) != len(labels):
        raise ValueError(f"images must be uint8 (N, S, S) with one label each, got {images.dtype} {images.shape}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    lines = []
    for i, (image, label) in enumerate(zip(images, labels)):
        name = f"images/{i:06d}.png"
        Image.fromarray(image, mode="L").save(out / name)
        texts = captions_for(kind, int(label), templates or TEMPLATES[kind], rng, captions_per_image)
        lines.append(json.dumps({"file_name": name, "text": texts, "label": int(label)}))
    tmp = out / f".{METADATA}.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out / METADATA)
    return out
