"""Conditioning embedders and positional embeddings shared by every model."""
import math

import torch
import torch.nn as nn

from ..ops.reference import cached_constant
from . import checks


class TimestepEmbedder(nn.Module):
    """Scalar timesteps (B,) -> (B, hidden): sinusoidal features [cos, sin] -> Linear -> SiLU -> Linear.

    Parameter names match DiT (``mlp.0``, ``mlp.2``). ``freq_shift`` (int): frequencies are
    ``10000 ** (-i / (half - freq_shift))``; 0 is DiT's, 1 is diffusers' DiT port
    (``CombinedTimestepLabelEmbeddings``).
    """

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256, freq_shift: int = 0):
        super().__init__()
        self.freq_shift = freq_shift
        checks.integer("hidden_size", hidden_size)
        checks.integer("frequency_embedding_size", frequency_embedding_size)
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size
        nn.init.normal_(self.mlp[0].weight, std=0.02)
        nn.init.normal_(self.mlp[2].weight, std=0.02)

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0, freq_shift: int = 0) -> torch.Tensor:
        """(B,) possibly fractional timesteps -> (B, dim) float32 sinusoidal features."""
        half = dim // 2
        exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
        freqs = torch.exp(exponent / (half - freq_shift))
        args = t[:, None].float() * freqs[None]
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
        return emb

    def forward(self, t: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """t (B,) -> (B, hidden); the sinusoidal features enter the MLP in ``dtype``, the model's
        compute dtype (that of its input x), never read from a weight: under diffusers'
        layerwise casting a weight holds its storage dtype outside its own forward."""
        t_freq = self.timestep_embedding(t, self.frequency_embedding_size, freq_shift=self.freq_shift)
        return self.mlp(t_freq.to(dtype))


class LabelEmbedder(nn.Module):
    """Class labels (B,) -> (B, hidden), with label dropout for classifier-free guidance.

    The table has ``num_classes + 1`` rows when dropout is on; label ``num_classes`` is the null
    (unconditional) class. Parameter names match DiT (``embedding_table``).
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        num_classes, hidden_size = checks.integer("num_classes", num_classes), checks.integer("hidden_size", hidden_size)
        use_cfg_embedding = checks.probability("dropout_prob", dropout_prob) > 0
        self.embedding_table = nn.Embedding(num_classes + use_cfg_embedding, hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        nn.init.normal_(self.embedding_table.weight, std=0.02)

    def token_drop(self, labels: torch.Tensor, force_drop_ids=None) -> torch.Tensor:
        if force_drop_ids is None:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop = force_drop_ids == 1
        return torch.where(drop, self.num_classes, labels)

    def forward(self, labels: torch.Tensor, train: bool, force_drop_ids=None) -> torch.Tensor:
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels)


def check_labels(y: torch.Tensor, num_classes: int, has_null: bool) -> None:
    """Labels must be int64 or int32 (the index dtypes of ``nn.Embedding``) in [0, num_classes), or
    num_classes (the null class) with CFG."""
    if y.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"y must be an integer tensor of class labels (int64 or int32), got dtype {y.dtype}")
    high = num_classes + int(has_null)
    # reading values back from an accelerator would synchronise every forward: check on the CPU
    # only (nn.Embedding's own device-side assert catches the rest)
    if y.device.type != "cpu" or torch.compiler.is_compiling():
        return
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= high):
        raise ValueError(
            f"y must hold labels in [0, {high}) (label {num_classes} is the null class), "
            f"got values in [{int(y.min())}, {int(y.max())}]"
        )


def sincos_1d(embed_dim: int, pos: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, embed_dim) [sin, cos] features (MAE / DiT), computed in float64."""
    if embed_dim % 2:
        raise ValueError(f"embed_dim must be even for sin-cos embeddings, got {embed_dim}")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64, device=pos.device) / (embed_dim / 2.0)
    omega = 1.0 / 10000 ** omega
    out = pos.reshape(-1).to(torch.float64)[:, None] * omega[None]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(embed_dim: int, H: int, W: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Frozen 2-D sin-cos positional embedding (H*W, embed_dim) for an H x W token grid, row-major,
    on ``device`` (default: the CPU) in ``dtype``.

    Identical to DiT's ``get_2d_sincos_pos_embed`` for square grids, defined for any (H, W).
    Cached per (size, device, dtype) (``ops.reference.cached_constant``): the result is shared,
    never modify it in place.
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be divisible by 4 for 2-D sin-cos embeddings, got {embed_dim}")
    device = torch.device(device or "cpu")
    key = ("sincos_2d", embed_dim, H, W, device, dtype)
    return cached_constant(key, lambda: _build_sincos_2d(embed_dim, H, W).to(device=device, dtype=dtype))


def _build_sincos_2d(embed_dim: int, H: int, W: int) -> torch.Tensor:
    grid_h = torch.arange(H, dtype=torch.float64, device="cpu")
    grid_w = torch.arange(W, dtype=torch.float64, device="cpu")
    # as in MAE/DiT: the first half encodes the column (w) coordinate, the second the row (h)
    gw, gh = torch.meshgrid(grid_w, grid_h, indexing="xy")
    return torch.cat([sincos_1d(embed_dim // 2, gw), sincos_1d(embed_dim // 2, gh)], dim=1).float()
