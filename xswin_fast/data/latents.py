"""The latent cache: VAE posteriors of an image folder, encoded once and memory-mapped.

Each encoding rank writes ``shard-<rank>-of-<world>.pt`` (``{"key", "indices", "labels", "mean",
"std", "mean_flip"?, "std_flip"?}``) into a directory named after :func:`latent_cache_key`.
"""
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..checkpoints import load_checkpoint, save_checkpoint
from .folders import DataError, ImageFolderDataset, uint8_to_tensor
from .sampler import unflip_index

logger = logging.getLogger(__name__)


class CachedLatentDataset(Dataset):
    """Pre-encoded VAE posteriors: items are (mean, std, y), unscaled float32 latents; flips cached
    too (indices ``i + len(self)``, see :mod:`.sampler`). ``shards``: the loaded shard dicts."""

    kind = "latents"

    def __init__(self, shards: List[Dict[str, torch.Tensor]], hflip: bool):
        self.hflip = hflip
        index_of = []
        for s, shard in enumerate(shards):
            for r, idx in enumerate(shard["indices"].tolist()):
                index_of.append((idx, s, r))
        index_of.sort()
        self._where = [(s, r) for _, s, r in index_of]  # dataset position -> (shard, row)
        self.shards = shards
        self.labels = [int(shards[s]["labels"][r]) for s, r in self._where]

    @property
    def targets(self) -> List[int]:
        return self.labels

    def __len__(self) -> int:
        return len(self._where)

    def __getitem__(self, index: int):
        i, flip = unflip_index(index, len(self))
        s, r = self._where[i]
        shard = self.shards[s]
        if flip and self.hflip:
            return shard["mean_flip"][r].float(), shard["std_flip"][r].float(), self.labels[i]
        return shard["mean"][r].float(), shard["std"][r].float(), self.labels[i]


def latent_cache_key(dataset: ImageFolderDataset, vae_spec: str, hflip: bool) -> str:
    """A hash of the images, their size, the VAE and the flips: the cache directory's name."""
    h = hashlib.sha1()
    h.update(json.dumps([dataset.root, dataset.image_size, os.path.abspath(vae_spec) if os.path.isdir(vae_spec) else vae_spec, hflip]).encode())
    for (path, label) in dataset.samples:
        h.update(f"{path}\0{label}\n".encode())
    return h.hexdigest()[:16]


def _complete_shard_set(cache_dir: Path) -> Optional[List[Path]]:
    groups: Dict[int, Dict[int, Path]] = {}
    for p in cache_dir.glob("shard-*-of-*.pt"):
        m = re.match(r"shard-(\d+)-of-(\d+)\.pt$", p.name)
        if m:
            groups.setdefault(int(m.group(2)), {})[int(m.group(1))] = p
    for world, found in sorted(groups.items()):
        if len(found) == world:
            return [found[r] for r in range(world)]
    return None


def _encode_shard(dataset: ImageFolderDataset, codec, cache_dir: Path, hflip: bool, rank: int, world_size: int,
                  batch_size: int, num_workers: int) -> None:
    """Encode this rank's 1/world of ``dataset`` and write its shard file."""
    mine = list(range(rank, len(dataset), world_size))
    out = {"indices": [], "labels": [], "mean": [], "std": [], "mean_flip": [], "std_flip": []}
    # read images with the loader's workers; unreadable ones are reported and left out
    loader = DataLoader(Subset(_RawImages(dataset), mine), batch_size=batch_size, num_workers=num_workers, collate_fn=_keep_readable)
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


def build_latent_cache(
    dataset: ImageFolderDataset, codec, cache_dir: Path, hflip: bool, rank: int, world_size: int,
    batch_size: int = 32, num_workers: int = 0, wait: Callable[[], None] = lambda: None,
) -> CachedLatentDataset:
    """Encode ``dataset`` once (each rank a 1/world share) or reuse a finished cache in ``cache_dir``.

    ``codec``: a :class:`xswin_fast.vae.LatentCodec`. ``wait`` is called after this rank wrote its
    shard and before the shards are read: under torchrun, a barrier.
    """
    cache_dir = Path(cache_dir)
    shards = _complete_shard_set(cache_dir) if cache_dir.is_dir() else None
    if shards is None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _encode_shard(dataset, codec, cache_dir, hflip, rank, world_size, batch_size, num_workers)
        wait()
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
        raise DataError(f"--data {dataset.root}: none of its images is readable (see the warnings above)")
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
        return i, self.dataset.samples[i][1], uint8_to_tensor(arr)
