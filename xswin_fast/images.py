"""Image output without torchvision: [-1, 1] tensors to uint8, grids and PNG folders."""
import math
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [-1, 1] -> uint8 (B, C, H, W) (values outside are clipped)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def make_grid(images: torch.Tensor, nrow: Optional[int] = None, padding: int = 2, upscale: int = 1, pad_value: int = 255) -> np.ndarray:
    """uint8 (B, C, H, W) -> (H', W', C) array: ``nrow`` images per row, nearest-upscaled."""
    if images.dtype != torch.uint8:
        images = to_uint8(images)
    B, C, H, W = images.shape
    if upscale > 1:
        images = images.repeat_interleave(upscale, dim=2).repeat_interleave(upscale, dim=3)
        H, W = H * upscale, W * upscale
    nrow = nrow or int(math.ceil(math.sqrt(B)))
    ncol = int(math.ceil(B / nrow))
    grid = np.full((padding + ncol * (H + padding), padding + nrow * (W + padding), C), pad_value, dtype=np.uint8)
    arr = images.permute(0, 2, 3, 1).numpy()
    for k in range(B):
        r, c = divmod(k, nrow)
        y, x = padding + r * (H + padding), padding + c * (W + padding)
        grid[y : y + H, x : x + W] = arr[k]
    return grid


def _pil(arr: np.ndarray):
    from PIL import Image

    # 2-D uint8 -> "L", (H, W, 3) uint8 -> "RGB"
    return Image.fromarray(np.ascontiguousarray(arr[..., 0] if arr.shape[-1] == 1 else arr))


def auto_upscale(size: int, target: int = 64) -> int:
    """Nearest-neighbour factor that brings tiny images (e.g. 8x8 digits) to a viewable size."""
    return max(1, target // size)


def save_grid(images: torch.Tensor, path, nrow: Optional[int] = None, upscale: Optional[int] = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    up = auto_upscale(images.shape[-1]) if upscale is None else upscale
    _pil(make_grid(images, nrow=nrow, upscale=up)).save(path)
    return path


def save_pngs(images: torch.Tensor, folder, names: Optional[Sequence[str]] = None, start: int = 0) -> List[Path]:
    """One PNG per image (uint8 or [-1, 1]), ``{index:06d}.png`` by default."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if images.dtype != torch.uint8:
        images = to_uint8(images)
    arr = images.permute(0, 2, 3, 1).numpy()
    out = []
    for k in range(arr.shape[0]):
        name = names[k] if names is not None else f"{start + k:06d}.png"
        p = folder / name
        _pil(arr[k]).save(p)
        out.append(p)
    return out
