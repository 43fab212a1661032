"""torch-fidelity wiring: FID, Inception Score, KID and precision/recall, offline.

Both inputs are datasets of uint8 (3, H, W) images. All four metrics are computed with one
feature extractor in one pass per input:

* ``digits-cnn`` (the project's own, see ``digits_extractor``) for the built-in digits;
* ``fashion-cnn`` (the project's own, see ``fashion_extractor``) for Fashion-MNIST;
* ``inception-v3-compat`` for everything else, with its weights read from a local file
  (torch-fidelity would otherwise download them). The file is checked with
  ``torch.load(weights_only=True)`` first: weights are data, never code (torch-fidelity itself
  loads it with ``weights_only=False``).
"""
import os
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..compat import ensure_torchvision_importable

INCEPTION = "inception-v3-compat"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
METRIC_KEYS = {
    "fid": "frechet_inception_distance",
    "isc_mean": "inception_score_mean",
    "isc_std": "inception_score_std",
    "kid_mean": "kernel_inception_distance_mean",
    "kid_std": "kernel_inception_distance_std",
    "precision": "precision",
    "recall": "recall",
    "f_score": "f_score",
}


class ImageListDataset(Dataset):
    """uint8 (3, H, W) tensors from image files (grayscale replicated to 3 channels)."""

    def __init__(self, paths: Sequence[os.PathLike]):
        self.paths = [Path(p) for p in paths]

    @classmethod
    def from_folder(cls, folder, exts=(".png", ".jpg", ".jpeg", ".bmp", ".webp")) -> "ImageListDataset":
        folder = Path(folder)
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in exts)
        if not paths:
            raise FileNotFoundError(f"no images in {folder}")
        return cls(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            arr = np.asarray(im.convert("RGB"))
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class TensorImageDataset(Dataset):
    """uint8 images held in memory: (N, C, H, W) with C in {1, 3}."""

    def __init__(self, images: torch.Tensor):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("expected uint8 (N, C, H, W)")
        self.images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i].contiguous()


def default_inception_weights() -> Optional[Path]:
    """torch-fidelity's Inception file in the torch hub cache, if it is there."""
    p = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    return p if p.is_file() else None


def inception_weights(path: Optional[os.PathLike] = None) -> Path:
    """``path``, else torch-fidelity's Inception file in the torch hub cache; FileNotFoundError
    saying where to put it when there is none (evaluation never downloads)."""
    found = Path(path) if path else default_inception_weights()
    if found is None:
        raise FileNotFoundError(
            f"no Inception weights: pass --inception-weights PATH (torch-fidelity's {INCEPTION_FILE}, "
            f"or place it in {Path(torch.hub.get_dir()) / 'checkpoints'}); evaluation never downloads"
        )
    return found


def check_weights_file(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature-extractor weights {path} not found")
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RuntimeError(f"refusing {path}: not a plain state dict loadable with weights_only=True ({exc})") from exc
    return path


def compute_metrics(
    generated: Dataset,
    reference: Dataset,
    feature_extractor: str = "digits",
    weights_path: Optional[os.PathLike] = None,
    metrics: Sequence[str] = ("fid", "isc", "kid", "prc"),
    batch_size: int = 64,
    kid_subset_size: int = 1000,
    isc_splits: int = 10,
    prc_neighborhood: int = 3,
    seed: int = 2020,
    device: Optional[str] = None,
    verbose: bool = False,
) -> Dict[str, float]:
    """FID / IS / KID / precision-recall of ``generated`` against ``reference``.

    ``feature_extractor``: "digits" (the registered ``digits-cnn``), "fashion" (``fashion-cnn``,
    Fashion-MNIST) or "inception" (needs
    ``weights_path`` or torch-fidelity's file in the torch hub cache; never downloads).
    Returns short keys: fid, isc_mean, isc_std, kid_mean, kid_std, precision, recall, f_score.
    """
    ensure_torchvision_importable()
    import torch_fidelity

    n1, n2 = len(generated), len(reference)
    if n1 < 2 or n2 < 2:
        raise ValueError(f"need at least 2 images per input, got {n1} generated and {n2} reference")
    sizes = dict(batch_size=batch_size, kid_subset_size=kid_subset_size, isc_splits=isc_splits,
                 prc_neighborhood=prc_neighborhood)
    for arg, value in sizes.items():  # 0 would give NaN metrics, not an error
        if value < 1:
            raise ValueError(f"{arg} must be >= 1, got {value}")
    if feature_extractor == "digits":
        from .digits_extractor import register

        name = register()
    elif feature_extractor == "fashion":
        from .fashion_extractor import register

        name = register()
    elif feature_extractor == "inception":
        name = INCEPTION
        weights_path = check_weights_file(inception_weights(weights_path))
    else:
        raise ValueError(f"feature_extractor must be 'digits', 'fashion' or 'inception', got {feature_extractor!r}")
    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    kwargs = dict(
        input1=generated, input2=reference, cuda=cuda, batch_size=batch_size,
        fid="fid" in metrics, isc="isc" in metrics, kid="kid" in metrics, prc="prc" in metrics,
        feature_extractor=name, feature_extractor_weights_path=str(weights_path) if weights_path else None,
        kid_subset_size=min(kid_subset_size, n1, n2), isc_splits=min(isc_splits, n1),
        prc_neighborhood=min(prc_neighborhood, n1 - 1, n2 - 1),
        rng_seed=seed, cache=False, save_cpu_ram=True, verbose=verbose, datasets_download=False,
    )
    raw = torch_fidelity.calculate_metrics(**kwargs)
    out = {short: float(raw[long]) for short, long in METRIC_KEYS.items() if long in raw}
    out["num_generated"], out["num_reference"] = n1, n2
    out["feature_extractor"] = name
    return out
