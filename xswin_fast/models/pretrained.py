"""Load any backbone folder without naming its class: ``from_pretrained(path_or_hub_id)``.

A folder written by ``model.save_pretrained(dir)`` holds ``config.json`` (the constructor
arguments and ``_class_name``) and ``diffusion_pytorch_model.safetensors``; the class is looked
up among every ``DiffusionBackbone`` subclass defined so far. A local folder is checked before it
loads (``verified_weights``).
"""
from typing import Any

from .base import DiffusionBackbone
from .verified_weights import local_folder, read_config

# the from_pretrained keywords that also locate config.json (hub download and cache options)
_CONFIG_KWARGS = ("cache_dir", "force_download", "proxies", "token", "local_files_only", "revision", "subfolder")


def backbone_class(name: str) -> type:
    """The ``DiffusionBackbone`` subclass called ``name`` ("XSwin", "USwin", "DiT", "UViT", ...)."""
    families = DiffusionBackbone.families
    if name not in families:
        raise ValueError(f"config.json names class {name!r}, which is not a backbone; known: {', '.join(families)}")
    return families[name]


def from_pretrained(pretrained_model_name_or_path: str, **kwargs: Any) -> DiffusionBackbone:
    """Load the backbone saved in a local folder or a hub repository (str), whatever its family.

    ``kwargs`` go to diffusers' ``ModelMixin.from_pretrained``: ``torch_dtype``, ``variant``,
    ``subfolder`` (e.g. "transformer" inside a pipeline folder), ``revision``, ``cache_dir``, ...
    """
    folder = local_folder(pretrained_model_name_or_path, kwargs.get("subfolder"))
    if folder is not None:
        config = read_config(folder)
    else:
        config = DiffusionBackbone.load_config(
            pretrained_model_name_or_path, **{k: kwargs[k] for k in _CONFIG_KWARGS if k in kwargs}
        )
    if not isinstance(config.get("_class_name"), str):
        raise ValueError(f"{folder or pretrained_model_name_or_path}: config.json names no _class_name (the backbone's class)")
    return backbone_class(config["_class_name"]).from_pretrained(pretrained_model_name_or_path, **kwargs)
