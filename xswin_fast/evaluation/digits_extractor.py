"""An offline feature extractor for the built-in digits, registered into torch-fidelity.

Inception-v3 features of 8x8 digits upscaled to 299x299 would say little (and need a 92 MB
download). This small CNN is trained by the project itself on scikit-learn's bundled digits
(seconds on a CPU, deterministic) and plays Inception's role: its 64-d penultimate features feed
FID, KID and precision/recall, its 10 class logits feed the Inception Score.

    python -m xswin_fast.evaluation.digits_extractor --out digits_cnn.pt   # train and save
    # default location: $XSWIN_FAST_CACHE or ~/.cache/xswin_fast/digits_cnn-v1.pt (trained on first use)

Training: a stratified 80/20 split of the 1,797 digits (seed 12345, independent of train.py's
split), AdamW 3e-3, 40 epochs of batch 64, random +-1 px shifts; the held-out accuracy is stored
with the weights (about 98%).
"""
import argparse
import logging
import os
import time
from pathlib import Path
from typing import Callable, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoints import load_checkpoint, save_checkpoint
from ..compat import ensure_torchvision_importable
from ..data import DigitsDataset, stratified_split

logger = logging.getLogger(__name__)

NAME = "digits-cnn"
VERSION = 1
FEATURES = ("64", "logits_unbiased")


def cache_path(file_name: str) -> Path:
    """``file_name`` in the project's cache: $XSWIN_FAST_CACHE, else ~/.cache/xswin_fast."""
    root = os.environ.get("XSWIN_FAST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "xswin_fast")
    return Path(root) / file_name


def default_weights_path() -> Path:
    return cache_path(f"digits_cnn-v{VERSION}.pt")


class DigitsCNN(nn.Module):
    """(B, 1, 8, 8) in [-1, 1] -> (64-d features, 10 logits).

    The features are divided by ``feature_scale``, their RMS over the training digits, so that
    FID and KID come out on an O(1) scale like Inception's pool features (KID's cubic kernel
    would otherwise blow small scale differences up by orders of magnitude).
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("feature_scale", torch.ones(()))
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 3, padding=1)
        self.fc = nn.Linear(64 * 4 * 4, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.conv1(x))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)  # (B, 64, 4, 4)
        h = F.relu(self.conv3(h))
        feat = F.relu(self.fc(h.flatten(1)))
        return feat / self.feature_scale, self.head(feat)


def _shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random +-1 pixel translations (zero fill = background -1)."""
    B = x.shape[0]
    dx = torch.randint(-1, 2, (B,), generator=g).tolist()
    dy = torch.randint(-1, 2, (B,), generator=g).tolist()
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    return torch.stack([padded[i, :, 1 + dy[i] : 9 + dy[i], 1 + dx[i] : 9 + dx[i]] for i in range(B)])


def train_digits_extractor(out_path=None, epochs: int = 40, seed: int = 12345, verbose: bool = True) -> Path:
    """Train the digits CNN on scikit-learn's digits and save it (weights-only data) to ``out_path``."""
    out_path = Path(out_path) if out_path else default_weights_path()
    full = DigitsDataset()
    train_idx, val_idx = stratified_split(full.all_targets, 0.2, seed)
    x, y = full.images, full.labels
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = DigitsCNN()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    tr = torch.tensor(train_idx)
    for epoch in range(epochs):
        net.train()
        perm = tr[torch.randperm(len(tr), generator=g)]
        for i in range(0, len(perm), 64):
            b = perm[i : i + 64]
            _, logits = net(_shift(x[b], g))
            loss = F.cross_entropy(logits, y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(x[val_idx])[1].argmax(1) == y[val_idx]).float().mean().item()
        net.feature_scale.fill_(net(x[train_idx])[0].pow(2).mean().sqrt().item())
    save_checkpoint({"name": NAME, "version": VERSION, "state_dict": net.state_dict(), "val_accuracy": acc, "seed": seed}, out_path)
    if verbose:
        print(f"digits feature extractor: held-out accuracy {acc:.4f}, saved to {out_path}")
    return out_path


def load_digits_cnn(path=None, train_if_missing: bool = True) -> DigitsCNN:
    path = Path(path) if path else default_weights_path()
    if not path.is_file():
        if not train_if_missing:
            raise FileNotFoundError(f"digits feature extractor weights {path} not found (train them with "
                                    "python -m xswin_fast.evaluation.digits_extractor --out PATH)")
        logger.info(f"training the digits feature extractor (once; cached at {path}): 40 epochs on the CPU")
        start = time.perf_counter()
        train_digits_extractor(path, verbose=False)
        logger.info(f"digits feature extractor trained in {time.perf_counter() - start:.0f} s")
    ck = load_checkpoint(path)
    net = DigitsCNN()
    net.load_state_dict(ck["state_dict"])
    return net.eval()


def _base_class():
    ensure_torchvision_importable()
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    return FeatureExtractorBase


def _area_resize(h: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(h, size=(size, size), mode="area")


def make_feature_extractor_class(load_net: Callable[[Optional[str]], nn.Module] = None, size: int = 8,
                                 features: Tuple[str, ...] = FEATURES,
                                 resize: Callable[[torch.Tensor, int], torch.Tensor] = _area_resize):
    """The torch-fidelity FeatureExtractorBase subclass (built lazily: torch_fidelity is optional)
    around the network that ``load_net(weights_path)`` returns, a module mapping (B, 1, size,
    size) images in [-1, 1] to (features, logits); ``features`` names them (the first is the
    feature layer of FID, KID and precision/recall); ``resize(images, size)`` brings images of
    another size to ``size``. Default: the digits CNN at 8x8, area resampling."""
    Base = _base_class()
    load_net = load_net or load_digits_cnn
    feature_name = features[0]

    class FeatureExtractorSmallCNN(Base):
        """A torch-fidelity extractor: uint8 (B, 3, H, W) -> the features ``features`` names."""

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            self.net = load_net(feature_extractor_weights_path)
            self.requires_grad_(False)
            self.eval()

        @staticmethod
        def get_provided_features_list():
            return features

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"isc": "logits_unbiased", "fid": feature_name, "kid": feature_name, "prc": feature_name}[metric]

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, size, size, dtype=torch.uint8)

        def forward(self, x):
            if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
                raise ValueError(f"expected uint8 (B, 3, H, W) images, got {x.dtype} {tuple(x.shape)}")
            h = x.float().mean(dim=1, keepdim=True) / 127.5 - 1  # grayscale in [-1, 1]
            if h.shape[-2:] != (size, size):
                h = resize(h, size)
            feat, logits = self.net(h)
            by_name = {feature_name: feat, "logits_unbiased": logits}
            return tuple(by_name[f] for f in self.features_list)

    return FeatureExtractorSmallCNN


def register_extractor(name: str, make_class: Callable[[], type]) -> str:
    """Register ``make_class()`` into torch-fidelity as ``name`` (idempotent); return the name."""
    _base_class()
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if name not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(name, make_class())
    return name


def register() -> str:
    """Register ``digits-cnn`` into torch-fidelity (idempotent); return the name."""
    return register_extractor(NAME, make_feature_extractor_class)


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help=f"weights file (default {default_weights_path()})")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--seed", type=int, default=12345)
    a = p.parse_args(argv)
    train_digits_extractor(a.out, a.epochs, a.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
