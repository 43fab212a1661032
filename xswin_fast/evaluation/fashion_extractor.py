"""An offline feature extractor for Fashion-MNIST, registered into torch-fidelity as ``fashion-cnn``.

Inception-v3 was trained on ImageNet photographs; 28x28 grey clothing upscaled to 299x299 is far
from what its features describe (and it needs a 92 MB download). This CNN is trained by the
project on Fashion-MNIST's own 60,000 training images (deterministic: fixed seed, one thread
order) and plays Inception's role: its 64-d penultimate features feed FID, KID and
precision/recall, its 10 class logits the Inception Score. Its accuracy on the 10,000 test images
is stored with the weights.

    python -m xswin_fast.evaluation.fashion_extractor --out fashion_cnn.pt   # train and save
    # default location: $XSWIN_FAST_CACHE or ~/.cache/xswin_fast/fashion_cnn-v1.pt (trained on first use)

It works at 16x16, the size compare_backbones.py trains at (the native 28x28 resampled
bilinearly with antialiasing, as ``--data fashion-mnist --image-size 16`` reads them); images of
another size are brought to it first (32 px: the padding removed, then resampled).
Training: AdamW 2e-3 with weight decay 1e-4, cosine decay over 8 epochs of batch 128, random
+-1 px shifts.
"""
import argparse
import logging
import math
import time
from pathlib import Path
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoints import load_checkpoint, save_checkpoint
from ..data.fashion_mnist import DEFAULT_SIZE, NATIVE_SIZE, FashionMNISTDataset, to_size
from .digits_extractor import cache_path, make_feature_extractor_class, register_extractor

logger = logging.getLogger(__name__)

NAME = "fashion-cnn"
VERSION = 1
FEATURES = ("fashion64", "logits_unbiased")
SHIFT = 1
EXTRACTOR_SIZE = 16  # the size the experiment trains at (docs/comparison.md); other sizes are resampled to it


def default_weights_path() -> Path:
    return cache_path(f"fashion_cnn-v{VERSION}.pt")


class FashionCNN(nn.Module):
    """(B, 1, 16, 16) in [-1, 1] -> (64-d features, 10 logits).

    The features are divided by ``feature_scale``, their RMS over the training images, so that
    FID and KID come out on an O(1) scale like Inception's pool features.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("feature_scale", torch.ones(()))
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
        self.fc = nn.Linear(128 * 4 * 4, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, 32, 8, 8)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)  # (B, 64, 4, 4)
        h = F.relu(self.conv3(h))  # (B, 128, 4, 4)
        feat = F.relu(self.fc(h.flatten(1)))
        return feat / self.feature_scale, self.head(feat)


def to_extractor_size(images: torch.Tensor, size: int = EXTRACTOR_SIZE) -> torch.Tensor:
    """float (B, 1, S, S) Fashion-MNIST images in [-1, 1] at any of the dataset's sizes -> the
    extractor's ``size``: a 32 px image loses its padding, then the native 28 px are resampled
    as the dataset resamples them."""
    if images.shape[-1] == size:
        return images
    if images.shape[-1] == DEFAULT_SIZE:
        pad = (DEFAULT_SIZE - NATIVE_SIZE) // 2
        images = images[..., pad : pad + NATIVE_SIZE, pad : pad + NATIVE_SIZE]
    return to_size(images, size)


def random_shift(x: torch.Tensor, g: torch.Generator, shift: int = SHIFT) -> torch.Tensor:
    """Each float (B, 1, S, S) image translated by up to ``shift`` pixels (background -1 fills)."""
    B, _, S, _ = x.shape
    d = torch.randint(-shift, shift + 1, (2, B), generator=g)
    padded = F.pad(x, (shift, shift, shift, shift), value=-1.0)
    rows = (torch.arange(S)[None, :] + shift + d[0][:, None])[:, :, None]  # (B, S, 1)
    cols = (torch.arange(S)[None, :] + shift + d[1][:, None])[:, None, :]  # (B, 1, S)
    return padded[torch.arange(B)[:, None, None], 0, rows, cols].unsqueeze(1)


def accuracy(net: FashionCNN, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    with torch.no_grad():
        hits = sum((net(x[i : i + batch])[1].argmax(1) == y[i : i + batch]).sum().item() for i in range(0, len(x), batch))
    return hits / len(x)


def train_fashion_extractor(out_path=None, data_dir=None, epochs: int = 8, seed: int = 12345, batch: int = 128,
                            lr: float = 2e-3, verbose: bool = True) -> Path:
    """Train the Fashion-MNIST CNN on the training split (``data_dir``: the IDX files' folder,
    None for the default), measure its test accuracy, save it (weights-only data) to
    ``out_path``; return the path. The same arguments give the same weights on one machine (it
    trains on one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same sums in the same order whatever the caller's setting
    try:
        return _train(Path(out_path) if out_path else default_weights_path(), data_dir, epochs, seed, batch, lr, verbose)
    finally:
        torch.set_num_threads(threads)


def _train(out_path: Path, data_dir, epochs: int, seed: int, batch: int, lr: float, verbose: bool) -> Path:
    """train_fashion_extractor's body, on the threads it set."""
    train = FashionMNISTDataset(data_dir, "train", image_size=EXTRACTOR_SIZE)
    test = FashionMNISTDataset(data_dir, "test", image_size=EXTRACTOR_SIZE)
    x, y = train.images, train.labels
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = FashionCNN()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(x) / batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    started = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(perm), batch):
            b = perm[i : i + batch]
            loss = F.cross_entropy(net(random_shift(x[b], g))[1], y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if verbose:
            print(f"epoch {epoch + 1}/{epochs}: last batch loss {loss.item():.4f}", flush=True)
    net.eval()
    test_acc = accuracy(net, test.images, test.labels)
    with torch.no_grad():
        net.feature_scale.fill_(torch.cat([net(x[i : i + 1000])[0] for i in range(0, len(x), 1000)]).pow(2).mean().sqrt().item())
    save_checkpoint({"name": NAME, "version": VERSION, "state_dict": net.state_dict(), "test_accuracy": test_acc,
                     "seed": seed, "epochs": epochs, "train_seconds": time.perf_counter() - started}, out_path)
    if verbose:
        print(f"fashion feature extractor: test accuracy {test_acc:.4f}, saved to {out_path}")
    return out_path


def load_fashion_cnn(path=None, train_if_missing: bool = True, data_dir=None) -> FashionCNN:
    """The cached extractor (``path`` or the default), trained first if missing and allowed."""
    path = Path(path) if path else default_weights_path()
    if not path.is_file():
        if not train_if_missing:
            raise FileNotFoundError(f"Fashion-MNIST feature extractor weights {path} not found (train them with "
                                    "python -m xswin_fast.evaluation.fashion_extractor --out PATH)")
        logger.info(f"training the Fashion-MNIST feature extractor (once; cached at {path})")
        train_fashion_extractor(path, data_dir, verbose=False)
    ck = load_checkpoint(path)
    net = FashionCNN()
    net.load_state_dict(ck["state_dict"])
    return net.eval()


def register() -> str:
    """Register ``fashion-cnn`` into torch-fidelity (idempotent); return the name."""
    return register_extractor(NAME, lambda: make_feature_extractor_class(load_fashion_cnn, EXTRACTOR_SIZE, FEATURES, to_extractor_size))


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help=f"weights file (default {default_weights_path()})")
    p.add_argument("--data-dir", default=None, help="folder of the IDX files (default /usr/share/datasets/fashion-mnist)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--if-missing", action="store_true", help="keep an existing weights file (print its accuracy)")
    a = p.parse_args(argv)
    path = Path(a.out) if a.out else default_weights_path()
    if a.if_missing and path.is_file():
        print(f"fashion feature extractor: test accuracy {load_checkpoint(path)['test_accuracy']:.4f}, kept {path}")
        return 0
    train_fashion_extractor(path, a.data_dir, a.epochs, a.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
