"""Datasets, the stratified split, the resumable distributed sampler and latent caching.

Every dataset here has ``len() == N`` base items but accepts indices in ``[0, 2N)``: index
``i + N`` is item ``i`` flipped horizontally. The sampler draws the flips (from the seed and the
epoch), so augmentation is a pure function of (seed, epoch, position): a resumed run sees the
very same images, flips included, whatever the number of loader workers. No torchvision: images
are read with Pillow.
"""
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

logger = logging.getLogger("xswin_fast.training")

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DIGITS_LEVELS = 16  # sklearn's digits hold integers 0..16


def _split_flip(index: int, n: int) -> Tuple[int, bool]:
    if not 0 <= index < 2 * n:
        raise IndexError(f"index {index} out of range for {n} items (x2 for flips)")
    return (index - n, True) if index >= n else (index, False)


class DigitsDataset(Dataset):
    """scikit-learn's bundled handwritten digits: 1,797 8x8 grayscale images, 10 classes.

    Items are (x, y): x (1, 8, 8) float in [-1, 1] (0..16 mapped linearly), y an int label.
    ``indices`` selects a subset (e.g. the train split) of the 1,797 images; ``image_size``
    other than 8 resamples them bilinearly.
    """

    kind = "digits"
    channels = 1

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

    @property
    def targets(self) -> List[int]:
        return self.labels.tolist()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        i, flip = _split_flip(index, len(self))
        x = self.images[i]
        return (x.flip(-1) if flip else x), int(self.labels[i])

    def uint8_image(self, i: int) -> np.ndarray:
        """Item ``i`` as an (H, W) uint8 image (0..16 scaled to 0..255)."""
        return np.round((self.images[i, 0].numpy() + 1) / 2 * 255).astype(np.uint8)

    def identifier(self, i: int) -> str:
        return str(self.indices[i])


def center_crop_arr(pil_image, image_size: int):
    """ADM's / DiT's center crop: box-downsample by 2 while large, bicubic-resize, crop the centre."""
    from PIL import Image

    while min(*pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = image_size / min(*pil_image.size)
    pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)
    arr = np.array(pil_image)
    crop_y = (arr.shape[0] - image_size) // 2
    crop_x = (arr.shape[1] - image_size) // 2
    return arr[crop_y : crop_y + image_size, crop_x : crop_x + image_size]


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
    """Images in ImageFolder layout, center-cropped to ``image_size``, RGB in [-1, 1].

    An image that cannot be read is reported (once per file) and replaced by the next readable
    item, so one bad file never stops a run; the replacement is deterministic.
    """

    kind = "folder"
    channels = 3

    def __init__(self, root: str, image_size: int, indices: Optional[Sequence[int]] = None, scan=None):
        self.root = os.path.abspath(os.path.expanduser(root))
        self.image_size = image_size
        self.classes, all_samples = scan if scan is not None else scan_image_folder(root)
        self.all_targets = [lab for _, lab in all_samples]
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
        raise RuntimeError(f"no readable image in {self.root}")

    def __getitem__(self, index: int):
        i, flip = _split_flip(index, len(self))
        j, arr = self.readable(i)
        if flip:
            arr = arr[:, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float() / 127.5 - 1
        return x, self.samples[j][1]

    def identifier(self, i: int) -> str:
        return os.path.relpath(self.samples[i][0], self.root)


def stratified_split(labels: Sequence[int], eval_fraction: float, seed: int) -> Tuple[List[int], List[int]]:
    """Per-class random split: round(fraction * n_c) of each class (at least one, and never the
    whole class) goes to eval. Returns sorted (train, eval) indices."""
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval fraction must be in [0, 1), got {eval_fraction}")
    labels = np.asarray(labels)
    if eval_fraction == 0.0:
        return list(range(len(labels))), []
    rng = np.random.default_rng(seed)
    train, held = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_eval = int(round(len(idx) * eval_fraction))
        if len(idx) > 1:
            n_eval = min(max(n_eval, 1), len(idx) - 1)
        else:
            n_eval = 0
        held += idx[:n_eval].tolist()
        train += idx[n_eval:].tolist()
    return sorted(train), sorted(held)


class ResumableDistributedSampler(DistributedSampler):
    """DistributedSampler that can start mid-epoch and draws horizontal flips.

    ``set_epoch(epoch, start_batch, batch_size)`` skips the first ``start_batch`` batches of this
    rank's share of the epoch, so a resumed run continues the exact data order. With ``hflip``
    every index i becomes ``i + len(dataset)`` with probability 1/2 (the dataset flips it); the
    flips depend only on (seed, epoch, i), identical on every rank.
    """

    def __init__(self, dataset, num_replicas: int, rank: int, shuffle: bool = True, seed: int = 0, hflip: bool = False):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.hflip = hflip
        self.start_index = 0

    def set_epoch(self, epoch: int, start_batch: int = 0, batch_size: int = 1) -> None:
        super().set_epoch(epoch)
        self.start_index = start_batch * batch_size

    def __iter__(self):
        indices = list(super().__iter__())
        n = len(self.dataset)
        if self.hflip:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch + 0x5DEECE66D)
            flips = torch.randint(0, 2, (n,), generator=g).tolist()
            indices = [i + n if flips[i] else i for i in indices]
        return iter(indices[self.start_index :])

    def __len__(self) -> int:
        return self.num_samples - self.start_index


class CachedLatentDataset(Dataset):
    """Pre-encoded VAE posteriors: items are (mean, std, y), unscaled; flips cached too.

    Built from shard files ``shard-<rank>-of-<world>.pt`` (one per encoding rank), each
    ``{"indices", "labels", "mean", "std", "mean_flip"?, "std_flip"?}``, loaded memory-mapped.
    """

    kind = "latents"

    def __init__(self, shards: List[Dict[str, torch.Tensor]], hflip: bool):
        self.hflip = hflip
        self._where = []  # dataset position -> (shard, row)
        index_of = []
        for s, shard in enumerate(shards):
            for r, idx in enumerate(shard["indices"].tolist()):
                index_of.append((idx, s, r))
        index_of.sort()
        self._where = [(s, r) for _, s, r in index_of]
        self.shards = shards
        self.labels = [int(shards[s]["labels"][r]) for s, r in self._where]

    @property
    def targets(self) -> List[int]:
        return self.labels

    def __len__(self) -> int:
        return len(self._where)

    def __getitem__(self, index: int):
        i, flip = _split_flip(index, len(self))
        s, r = self._where[i]
        shard = self.shards[s]
        if flip and self.hflip:
            return shard["mean_flip"][r].float(), shard["std_flip"][r].float(), self.labels[i]
        return shard["mean"][r].float(), shard["std"][r].float(), self.labels[i]


def latent_cache_key(dataset: ImageFolderDataset, vae_spec: str, hflip: bool) -> str:
    h = hashlib.sha1()
    h.update(json.dumps([dataset.root, dataset.image_size, os.path.abspath(vae_spec) if os.path.isdir(vae_spec) else vae_spec, hflip]).encode())
    for (path, label) in dataset.samples:
        h.update(f"{path}\0{label}\n".encode())
    return h.hexdigest()[:16]


def _complete_shard_set(cache_dir: Path) -> Optional[List[Path]]:
    import re

    groups: Dict[int, Dict[int, Path]] = {}
    for p in cache_dir.glob("shard-*-of-*.pt"):
        m = re.match(r"shard-(\d+)-of-(\d+)\.pt$", p.name)
        if m:
            groups.setdefault(int(m.group(2)), {})[int(m.group(1))] = p
    for world, found in sorted(groups.items()):
        if len(found) == world:
            return [found[r] for r in range(world)]
    return None


def build_latent_cache(
    dataset: ImageFolderDataset, codec, cache_dir: Path, hflip: bool, rank: int, world_size: int,
    batch_size: int = 32, num_workers: int = 0,
) -> CachedLatentDataset:
    """Encode ``dataset`` once (each rank a 1/world share) or reuse a finished cache in ``cache_dir``."""
    from torch.utils.data import DataLoader, Subset

    from .checkpoint import load_checkpoint, save_checkpoint
    from .distributed import barrier

    cache_dir = Path(cache_dir)
    shards = _complete_shard_set(cache_dir) if cache_dir.is_dir() else None
    if shards is None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        mine = list(range(rank, len(dataset), world_size))
        out = {"indices": [], "labels": [], "mean": [], "std": [], "mean_flip": [], "std_flip": []}
        # read images with the loader's workers; unreadable ones are reported and left out
        loader = DataLoader(
            Subset(_RawImages(dataset), mine), batch_size=batch_size, num_workers=num_workers, collate_fn=_keep_readable
        )
        if rank == 0:
            logger.info("caching VAE latents of %d images in %s", len(dataset), cache_dir)
        for items in loader:
            if not items:
                continue
            idx, labels, x = zip(*items)
            x = torch.stack(x)
            mean, std = codec.encode_dist(x)
            out["indices"] += idx
            out["labels"] += labels
            out["mean"].append(mean.cpu())
            out["std"].append(std.cpu())
            if hflip:
                mean_f, std_f = codec.encode_dist(x.flip(-1))
                out["mean_flip"].append(mean_f.cpu())
                out["std_flip"].append(std_f.cpu())
        shard = {
            "key": cache_dir.name, "indices": torch.tensor(out["indices"], dtype=torch.long),
            "labels": torch.tensor(out["labels"], dtype=torch.long),
        }
        for k in ("mean", "std") + (("mean_flip", "std_flip") if hflip else ()):
            shard[k] = torch.cat(out[k]) if out[k] else torch.empty(0)
        save_checkpoint(shard, cache_dir / f"shard-{rank}-of-{world_size}.pt")
        barrier()
        shards = _complete_shard_set(cache_dir)
        if shards is None:
            raise RuntimeError(f"latent cache in {cache_dir} is incomplete after encoding")
    elif rank == 0:
        logger.info("using cached VAE latents from %s", cache_dir)
    loaded = []
    for p in shards:
        try:
            loaded.append(torch.load(p, map_location="cpu", weights_only=True, mmap=True))
        except Exception:
            loaded.append(load_checkpoint(p))
    keys = {sh.get("key") for sh in loaded}
    if keys != {cache_dir.name}:
        raise RuntimeError(f"the latent cache in {cache_dir} was written for other data or settings (key {keys}); "
                           "delete it or pick another --latent-cache-dir")
    ds = CachedLatentDataset(loaded, hflip)
    if len(ds) == 0:
        raise RuntimeError(f"no readable images in {dataset.root}")
    return ds


def _keep_readable(items):
    return [it for it in items if it is not None]


class _RawImages(Dataset):
    """(index, label, x) for readable items, None for unreadable ones (reported)."""

    def __init__(self, dataset: ImageFolderDataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        try:
            arr = self.dataset.load_uint8(i)
        except Exception as exc:
            self.dataset.report(i, exc)
            return None
        x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float() / 127.5 - 1
        return i, self.dataset.samples[i][1], x
