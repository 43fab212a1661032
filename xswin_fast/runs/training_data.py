"""The data side of a run: datasets, VAE, latent cache, split, sampler and loader, from the config.

A batch is either ``(images, labels)`` or, from the latent cache, a :class:`LatentBatch` of VAE
posteriors: its own type, so that no other tuple is ever mistaken for cached latents.
"""
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from ..data import (
    CaptionedImageDataset,
    DigitsDataset,
    FashionMNISTDataset,
    ImageFolderDataset,
    ResumableDistributedSampler,
    build_latent_cache,
    latent_cache_key,
    read_captioned_folder,
    scan_image_folder,
    stratified_split,
)
from ..data.captions import CaptionedFolder
from ..text import TextEncoder, cached_text_embeddings
from ..text.cache import CACHE_FOLDER
from ..text.table import CaptionTable
from ..vae import LatentCodec, load_vae
from .config import FASHION_MNIST, ConfigError, TrainConfig
from .distributed import DistInfo, barrier


class LatentBatch(NamedTuple):
    """Cached VAE posteriors: ``mean`` and ``std`` (B, C, h, w) float32 unscaled latents, ``labels``
    (B,) int64 (image indices in a --captions run; one item of :class:`CachedLatents` before collation)."""

    mean: torch.Tensor
    std: torch.Tensor
    labels: torch.Tensor


class CachedLatents(Dataset):
    """A latent cache whose items are :class:`LatentBatch` (the loader collates them into one);
    indices as the cache's (flipped copies at ``i + len(self)``)."""

    def __init__(self, cache: Dataset):
        self.cache = cache
        self.kind = cache.kind

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int) -> LatentBatch:
        return LatentBatch(*self.cache[index])

    @property
    def targets(self) -> List[int]:
        return self.cache.targets


@dataclass
class DataInfo:
    """What a checkpoint records about its data ("data"): sampling needs the classes (none in a
    --captions run), the latent shape and the text width (0 without captions), evaluation the kind."""

    kind: str
    root: Optional[str]
    classes: List[str]
    num_classes: int
    image_size: int
    image_channels: int
    latent_size: int
    latent_channels: int
    num_train: int
    num_eval: int
    text_dim: int = 0


@dataclass
class TrainingData:
    """The training set and how this process iterates it (``local_batch`` images per step);
    ``captions``: a --captions run's caption embeddings (its items' labels are image indices into
    it), None otherwise."""

    train_set: Dataset
    codec: Optional[LatentCodec]
    info: DataInfo
    split: Dict[str, Any]  # split.json: the held-out items evaluate.py compares against
    sampler: ResumableDistributedSampler
    loader: DataLoader
    local_batch: int
    steps_per_epoch: int
    captions: Optional[CaptionTable] = None

    def write_split(self, run_dir: Path) -> None:
        tmp = run_dir / ".split.json.tmp"
        tmp.write_text(json.dumps(self.split))
        os.replace(tmp, run_dir / "split.json")


def _split_datasets(config: TrainConfig) -> Tuple[Dataset, List[str], List[str]]:
    """The training dataset, its classes and the held-out item ids (digit indices or relative paths)."""
    split_seed = config.global_seed if config.split_seed is None else config.split_seed
    if config.captions:  # a plain random split: the images have no classes
        folder = read_captioned_folder(config.captions)
        train_idx, eval_idx = stratified_split([0] * len(folder.files), config.eval_fraction, split_seed)
        base = CaptionedImageDataset(folder, config.image_size, indices=train_idx)
        base.readable(0)
        return base, [], [folder.files[i] for i in eval_idx]
    if config.data == FASHION_MNIST:  # the official split: the 10,000 test images are held out
        base = FashionMNISTDataset(config.data_dir, "train", image_size=config.image_size)
        return base, base.classes, [str(i) for i in range(len(FashionMNISTDataset(config.data_dir, "test").all_targets))]
    if config.data:
        scan = scan_image_folder(config.data)
        classes, samples = scan
        train_idx, eval_idx = stratified_split([lab for _, lab in samples], config.eval_fraction, split_seed)
        base = ImageFolderDataset(config.data, config.image_size, indices=train_idx, scan=scan)
        base.readable(0)  # DataError now, in this process, if no image can be read (one read otherwise)
        return base, classes, [os.path.relpath(samples[i][0], base.root) for i in eval_idx]
    full = DigitsDataset()
    train_idx, eval_idx = stratified_split(full.all_targets, config.eval_fraction, split_seed)
    base = DigitsDataset(train_idx, image_size=config.image_size)
    return base, base.classes, [str(i) for i in eval_idx]


def _load_codec(config: TrainConfig, channels: int, device: torch.device) -> Optional[LatentCodec]:
    if not config.vae:
        return None
    try:
        codec = load_vae(config.vae, device, config.vae_subfolder)
    except RuntimeError as exc:
        raise ConfigError(f"{exc} (--vae none trains in pixel space)") from exc
    if codec.image_channels != channels:
        raise ConfigError(f"the VAE takes {codec.image_channels}-channel images, the data has {channels}")
    if config.image_size % codec.downsample:
        raise ConfigError(f"--image-size must be divisible by the VAE's downsampling factor {codec.downsample}")
    return codec


def caption_table(config: TrainConfig, folder: CaptionedFolder, dist: DistInfo) -> CaptionTable:
    """Every caption of ``folder`` embedded by the run's text encoder, from the text cache (rank 0
    encodes on a miss, the other ranks wait and load)."""
    captions = folder.distinct_captions()
    row = {c: i for i, c in enumerate(captions)}
    cache_dir = Path(config.text_cache_dir or os.path.join(folder.root, CACHE_FOLDER))

    def load_encoder() -> TextEncoder:
        try:
            return TextEncoder.from_pretrained(config.text_encoder, config.text_encoder_dtype, dist.device,
                                               config.text_max_length)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--text-encoder {config.text_encoder} cannot be loaded: {exc}") from exc

    embeddings, _ = cached_text_embeddings(captions, config.text_encoder, config.text_encoder_dtype, config.text_max_length,
                                           cache_dir, load_encoder, wait=barrier, write=dist.is_main)
    return CaptionTable(embeddings, captions, [[row[c] for c in caps] for caps in folder.captions])


def build_training_data(config: TrainConfig, dist: DistInfo) -> TrainingData:
    """Everything the loop reads: the (possibly latent-cached) training set and this rank's loader."""
    base, classes, eval_ids = _split_datasets(config)
    codec = _load_codec(config, base.channels, dist.device)
    train_set = base
    if config.cache_latents:
        key = latent_cache_key(base, config.vae, config.hflip)
        cache_dir = os.path.join(config.latent_cache_dir or os.path.join(config.results_dir, "latent-cache"), key)
        train_set = CachedLatents(build_latent_cache(
            base, codec, Path(cache_dir), config.hflip, dist.rank, dist.world_size, num_workers=config.num_workers, wait=barrier,
        ))
    down = codec.downsample if codec else 1
    captions = caption_table(config, base.folder, dist) if config.captions else None
    info = DataInfo(
        kind=base.kind, root=config.data or config.captions, classes=list(classes), num_classes=len(classes), image_size=config.image_size,
        image_channels=base.channels, latent_size=config.image_size // down,
        latent_channels=codec.latent_channels if codec else base.channels, num_train=len(train_set), num_eval=len(eval_ids),
        text_dim=captions.dim if captions else 0,
    )
    split = {"kind": base.kind, "root": str(base.root) if base.kind == FASHION_MNIST else config.data or config.captions,
             "eval_fraction": config.eval_fraction,
             "seed": config.global_seed if config.split_seed is None else config.split_seed,
             "image_size": config.image_size, "eval": eval_ids}
    if config.global_batch_size % dist.world_size:
        raise ConfigError(f"--global-batch-size {config.global_batch_size} must be divisible by the world size {dist.world_size}")
    local_batch = config.global_batch_size // dist.world_size
    sampler = ResumableDistributedSampler(
        train_set, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=config.global_seed, hflip=config.hflip
    )
    steps_per_epoch = sampler.num_samples // local_batch
    if steps_per_epoch == 0:
        raise ConfigError(
            f"the per-process batch {local_batch} is larger than this process's share of the data "
            f"({sampler.num_samples} images); lower --global-batch-size"
        )
    loader = DataLoader(
        train_set, batch_size=local_batch, sampler=sampler, num_workers=config.num_workers,
        pin_memory=dist.device.type == "cuda", drop_last=True, persistent_workers=config.num_workers > 0,
        # its own generator: creating an iterator must not consume the global RNG (exact resume)
        generator=torch.Generator().manual_seed(config.global_seed),
    )
    return TrainingData(train_set, codec, info, split, sampler, loader, local_batch, steps_per_epoch, captions)

