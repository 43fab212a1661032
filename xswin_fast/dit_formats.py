"""DiT weights in the two official formats.

- The original facebookresearch/DiT ``.pt`` checkpoints are our ``DiT``'s own state dict
  (same keys): ``dit_from_official`` infers the constructor arguments from the tensors and loads
  with ``strict=True``; ``model.state_dict()`` is the way back.
- diffusers' ``DiTTransformer2DModel`` (e.g. ``facebook/DiT-XL-2-256``'s ``transformer``):
  ``dit_from_diffusers`` / ``dit_to_diffusers`` convert a model, and
  ``state_dict_from_diffusers`` / ``state_dict_to_diffusers`` its tensors.

diffusers' port computes two things differently from the original code: its timestep
frequencies are ``10000 ** (-i / 127)`` instead of ``/ 128`` and the LayerNorm before each MLP
uses its ``norm_eps`` (1e-5 by default) instead of 1e-6. ``dit_from_diffusers`` sets our
``timestep_freq_shift=1`` and ``mlp_norm_eps`` so that the converted model computes what the
diffusers model computes; a DiT with the original arithmetic converts with a warning, its
outputs then differ slightly (as the official diffusers port of DiT differs from the original).
diffusers also keeps one copy of the timestep and label embedders per block (all equal in a
converted checkpoint) and uses block 0's for the final layer.
"""
import warnings
from os import PathLike
from typing import Dict, Optional, Union

import torch

from .compat import ensure_torchvision_importable
from .models.dit import DiT

StateDict = Dict[str, torch.Tensor]

# head counts of DiT's presets by width (the weights do not record them)
_DIT_HEADS = {384: 6, 768: 12, 1024: 16, 1152: 16}


def dit_from_official(checkpoint: Union[str, PathLike, StateDict], num_heads: Optional[int] = None) -> DiT:
    """A ``DiT`` holding an original DiT checkpoint: a path to a ``.pt`` file or its state dict.

    A DiT training checkpoint (a dict with "ema") loads its EMA weights, as DiT's sample.py does.
    ``num_heads`` (int) is needed only for a width that is not one of DiT's presets.
    """
    sd = torch.load(checkpoint, map_location="cpu", weights_only=True) if isinstance(checkpoint, (str, PathLike)) else checkpoint
    sd = sd.get("ema", sd)
    if "x_embedder.proj.weight" not in sd:
        raise ValueError("checkpoint is not a DiT state dict (no 'x_embedder.proj.weight')")
    hidden, in_channels, patch = sd["x_embedder.proj.weight"].shape[:3]
    if num_heads is None and hidden not in _DIT_HEADS:
        raise ValueError(f"pass num_heads: width {hidden} is not one of DiT's presets ({sorted(_DIT_HEADS)})")
    grid = int(round(sd["pos_embed"].shape[1] ** 0.5))
    out_channels = sd["final_layer.linear.weight"].shape[0] // patch**2
    rows = sd["y_embedder.embedding_table.weight"].shape[0]
    model = DiT(
        input_size=grid * patch, patch_size=patch, in_channels=in_channels, hidden_size=hidden,
        depth=len({k.split(".")[1] for k in sd if k.startswith("blocks.")}),
        num_heads=num_heads or _DIT_HEADS[hidden],
        mlp_ratio=sd["blocks.0.mlp.fc1.weight"].shape[0] / hidden,
        num_classes=rows - 1, class_dropout_prob=0.1, learn_sigma=out_channels == 2 * in_channels,
    )
    model.load_state_dict(sd, strict=True)
    return model


def _block_pairs(depth: int):
    """(our key, diffusers key) for every block tensor except the fused qkv."""
    for i in range(depth):
        ours, theirs = f"blocks.{i}.", f"transformer_blocks.{i}."
        for a, b in (
            ("adaLN_modulation.1", "norm1.linear"), ("attn.proj", "attn1.to_out.0"),
            ("mlp.fc1", "ff.net.0.proj"), ("mlp.fc2", "ff.net.2"),
        ):
            for p in ("weight", "bias"):
                yield f"{ours}{a}.{p}", f"{theirs}{b}.{p}"


_SHARED_PAIRS = (
    ("x_embedder.proj.weight", "pos_embed.proj.weight"), ("x_embedder.proj.bias", "pos_embed.proj.bias"),
    ("final_layer.adaLN_modulation.1.weight", "proj_out_1.weight"), ("final_layer.adaLN_modulation.1.bias", "proj_out_1.bias"),
    ("final_layer.linear.weight", "proj_out_2.weight"), ("final_layer.linear.bias", "proj_out_2.bias"),
)
# our conditioning embedders -> the copy inside each diffusers block (under norm1.emb.)
_EMBEDDER_PAIRS = (
    ("t_embedder.mlp.0.weight", "timestep_embedder.linear_1.weight"), ("t_embedder.mlp.0.bias", "timestep_embedder.linear_1.bias"),
    ("t_embedder.mlp.2.weight", "timestep_embedder.linear_2.weight"), ("t_embedder.mlp.2.bias", "timestep_embedder.linear_2.bias"),
    ("y_embedder.embedding_table.weight", "class_embedder.embedding_table.weight"),
)


def state_dict_to_diffusers(sd: StateDict, depth: int) -> StateDict:
    """Our DiT state dict (= the original DiT's) -> ``DiTTransformer2DModel``'s (``pos_embed`` is
    dropped: diffusers recomputes it). ``depth`` (int): the number of blocks."""
    out = {theirs: sd[ours] for ours, theirs in (*_SHARED_PAIRS, *_block_pairs(depth))}
    for i in range(depth):
        for ours, theirs in _EMBEDDER_PAIRS:
            out[f"transformer_blocks.{i}.norm1.emb.{theirs}"] = sd[ours]
        for p in ("weight", "bias"):
            q, k, v = sd[f"blocks.{i}.attn.qkv.{p}"].chunk(3, dim=0)
            for name, t in (("to_q", q), ("to_k", k), ("to_v", v)):
                out[f"transformer_blocks.{i}.attn1.{name}.{p}"] = t
    return out


def state_dict_from_diffusers(sd: StateDict, depth: int, pos_embed: torch.Tensor) -> StateDict:
    """``DiTTransformer2DModel``'s state dict -> our DiT's, with ``pos_embed`` (1, L, D) (diffusers
    keeps it out of its state dict). Raises ValueError if the blocks' embedder copies differ."""
    out = {ours: sd[theirs] for ours, theirs in (*_SHARED_PAIRS, *_block_pairs(depth))}
    for ours, theirs in _EMBEDDER_PAIRS:
        copies = [sd[f"transformer_blocks.{i}.norm1.emb.{theirs}"] for i in range(depth)]
        if any(not torch.equal(c, copies[0]) for c in copies[1:]):
            raise ValueError(f"the blocks' copies of {theirs} differ; DiT has one shared embedder")
        out[ours] = copies[0]
    for i in range(depth):
        for p in ("weight", "bias"):
            parts = [sd[f"transformer_blocks.{i}.attn1.{n}.{p}"] for n in ("to_q", "to_k", "to_v")]
            out[f"blocks.{i}.attn.qkv.{p}"] = torch.cat(parts, dim=0)
    out["pos_embed"] = pos_embed
    return out


def dit_from_diffusers(transformer) -> DiT:
    """A float32 ``DiT`` computing what a diffusers ``DiTTransformer2DModel`` computes, same weights."""
    cfg = transformer.config
    if cfg.norm_type != "ada_norm_zero" or cfg.activation_fn != "gelu-approximate" or not cfg.attention_bias:
        raise ValueError("only DiT's layout converts: norm_type='ada_norm_zero', activation_fn='gelu-approximate', attention_bias=True")
    out_channels = cfg.out_channels or cfg.in_channels
    if out_channels not in (cfg.in_channels, 2 * cfg.in_channels):
        raise ValueError(f"out_channels must be in_channels or twice it, got {out_channels} for {cfg.in_channels}")
    hidden = cfg.num_attention_heads * cfg.attention_head_dim
    model = DiT(
        input_size=cfg.sample_size, patch_size=cfg.patch_size, in_channels=cfg.in_channels, hidden_size=hidden,
        depth=cfg.num_layers, num_heads=cfg.num_attention_heads,
        mlp_ratio=transformer.transformer_blocks[0].ff.net[0].proj.out_features / hidden,
        class_dropout_prob=0.1, num_classes=cfg.num_embeds_ada_norm, learn_sigma=out_channels == 2 * cfg.in_channels,
        timestep_freq_shift=1, mlp_norm_eps=cfg.norm_eps,
    )
    sd = state_dict_from_diffusers(transformer.state_dict(), cfg.num_layers, transformer.pos_embed.pos_embed)
    model.load_state_dict(sd, strict=True)
    return model


def dit_to_diffusers(model: DiT):
    """A float32 diffusers ``DiTTransformer2DModel`` with the weights of ``model`` (a ``DiT``, not a UViT)."""
    ensure_torchvision_importable()
    from diffusers import DiTTransformer2DModel

    if type(model) is not DiT:
        raise TypeError(f"model must be a DiT, got {type(model).__name__}")
    cfg = model.config
    if model.y_embedder.dropout_prob <= 0:
        raise ValueError("diffusers' DiT always has the null-class row: model needs class_dropout_prob > 0")
    if cfg.timestep_freq_shift != 1:
        warnings.warn(
            "this DiT uses the original timestep frequencies; diffusers' DiTTransformer2DModel shifts them "
            "(freq_shift=1), so the converted model's outputs differ slightly (as diffusers' own DiT port does)"
        )
    transformer = DiTTransformer2DModel(
        num_attention_heads=model.num_heads, attention_head_dim=model.hidden_size // model.num_heads,
        in_channels=model.in_channels, out_channels=model.out_channels, num_layers=model.depth,
        sample_size=model.input_size, patch_size=model.patch_size, num_embeds_ada_norm=model.num_classes,
        norm_eps=cfg.mlp_norm_eps,
    )
    if transformer.transformer_blocks[0].ff.net[0].proj.out_features != model.blocks[0].mlp.fc1.out_features:
        raise ValueError(f"diffusers' DiT has mlp_ratio 4, this model {cfg.mlp_ratio}")
    transformer.load_state_dict(state_dict_to_diffusers(model.state_dict(), model.depth), strict=True)
    return transformer
