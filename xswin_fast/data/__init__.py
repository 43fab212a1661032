"""Datasets and their sampling: the built-in digits, Fashion-MNIST, image folders, captioned image folders, the stratified split, the
resumable sampler (which also draws the flips) and the VAE latent cache."""
from .captions import CaptionedFolder, CaptionedImageDataset, read_captioned_folder, write_captioned_folder
from .digits import DigitsDataset
from .fashion_mnist import FashionMNISTDataset
from .folders import DataError, ImageFolderDataset, scan_image_folder
from .latents import CachedLatentDataset, build_latent_cache, latent_cache_key
from .sampler import ResumableDistributedSampler
from .split import stratified_split

__all__ = [
    "CaptionedFolder", "CaptionedImageDataset", "read_captioned_folder", "write_captioned_folder",
    "DataError", "DigitsDataset", "FashionMNISTDataset", "ImageFolderDataset", "scan_image_folder", "CachedLatentDataset", "build_latent_cache",
    "latent_cache_key", "ResumableDistributedSampler", "stratified_split",
]
