"""Model folders checked before they load, as the training checkpoints are.

``save_pretrained`` records the SHA-256 of each weights file it writes (safetensors, .bin, shard
index) in ``weights_sha256.json`` beside them. ``from_pretrained`` of a local folder then checks,
before diffusers reads anything: config.json is present and a JSON object; the weights file (or
shard index and shards) that the call loads is present; each recorded file still has its hash; each
safetensors file is readable; and its tensors are exactly the model's (names and shapes, against
the model that config.json builds). Every load, hub ids included, refuses a model that diffusers
would complete with freshly initialised weights. A failed check is one line naming the folder and
the file: OSError for a missing file, ValueError for a wrong one. A folder with no recorded hashes
(written by another tool, or by diffusers alone) loads without the hash check.
"""
import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import torch
from diffusers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME
from diffusers.utils.hub_utils import _add_variant
from safetensors import SafetensorError, safe_open

CHECKSUMS = "weights_sha256.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".index.json")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _weight_files(folder: Path) -> Dict[str, Tuple[int, int, int]]:
    """name -> (inode, size, mtime_ns) of every weights file in ``folder``."""
    if not folder.is_dir():
        return {}
    stats = {}
    for p in folder.iterdir():
        if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES):
            st = p.stat()
            stats[p.name] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return stats


def _read_record(folder: Path) -> Dict[str, str]:
    path = folder / CHECKSUMS
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{folder}: {CHECKSUMS} is not valid JSON ({e})") from None
    if not isinstance(record, dict) or not all(isinstance(v, str) for v in record.values()):
        raise ValueError(f"{folder}: {CHECKSUMS} must map file names to SHA-256 hex digests")
    return record


def record_checksums(folder: Path, before: Dict[str, Tuple[int, int, int]]) -> None:
    """Hash the weights files that changed since ``before`` (``_weight_files`` before a save) and
    keep the recorded hashes of the unchanged files that remain; written atomically."""
    after = _weight_files(folder)
    record = {name: digest for name, digest in _read_record(folder).items() if name in after}
    for name, stat in after.items():
        if before.get(name) != stat:
            record[name] = file_sha256(folder / name)
    tmp = folder / f".{CHECKSUMS}.tmp"
    tmp.write_text(json.dumps(dict(sorted(record.items())), indent=2) + "\n")
    os.replace(tmp, folder / CHECKSUMS)


def local_folder(path, subfolder: Optional[str]) -> Optional[Path]:
    """The local folder ``from_pretrained(path, subfolder=...)`` reads, or None for a hub id."""
    folder = Path(path)
    if not folder.is_dir():
        return None
    return folder / subfolder if subfolder else folder


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json (not a model folder written by save_pretrained)")
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{folder}: config.json is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{folder}: config.json must hold a JSON object, got {type(config).__name__}")
    return config


def weights_to_load(folder: Path, variant: Optional[str], use_safetensors: Optional[bool]) -> List[str]:
    """The weights files (an index first, then its shards) that diffusers loads from ``folder``."""
    names = [(SAFE_WEIGHTS_INDEX_NAME, SAFETENSORS_WEIGHTS_NAME)] if use_safetensors is not False else []
    names += [(WEIGHTS_INDEX_NAME, WEIGHTS_NAME)] if use_safetensors is not True else []
    for index, single in names:
        index, single = _add_variant(index, variant), _add_variant(single, variant)
        if (folder / index).is_file():
            try:
                shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
                raise ValueError(f"{folder}: {index} is not a shard index with a weight_map ({e!r})") from None
            missing = [s for s in shards if not (folder / s).is_file()]
            if missing:
                raise FileNotFoundError(f"{folder}: {index} names shards that are missing: {', '.join(missing)}")
            return [index, *shards]
        if (folder / single).is_file():
            return [single]
    wanted = " or ".join(_add_variant(single, variant) for _, single in names)
    raise FileNotFoundError(f"{folder}: no weights file ({wanted})")


def check_hashes(folder: Path, files: Iterable[str]) -> None:
    record = _read_record(folder)
    for name in files:
        if name in record and file_sha256(folder / name) != record[name]:
            raise ValueError(
                f"{folder}: {name} does not match the SHA-256 recorded in {CHECKSUMS} when it was saved "
                "(the file is corrupt or was changed after saving)"
            )


def safetensors_shapes(folder: Path, files: Iterable[str]) -> Dict[str, Tuple[int, ...]]:
    """name -> shape of every tensor in the safetensors ``files``, read from their headers."""
    shapes = {}
    for name in files:
        if not name.endswith(".safetensors"):
            continue
        try:
            with safe_open(folder / name, framework="pt") as f:
                for key in f.keys():
                    shapes[key] = tuple(f.get_slice(key).get_shape())
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{folder}: {name} is not a readable safetensors file ({' '.join(str(e).split())})") from None
    return shapes


def check_tensors(folder: Path, found: Dict[str, Tuple[int, ...]], expected: Dict[str, Tuple[int, ...]], what: str) -> None:
    """Refuse weights that miss, add or reshape one of the model's tensors."""
    problems = []
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    reshaped = [f"{k} {found[k]} (expected {expected[k]})" for k in expected if k in found and found[k] != expected[k]]
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrongly shaped", reshaped)):
        if keys:
            more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
            problems.append(f"{label}: {', '.join(keys[:3])}{more}")
    if problems:
        raise ValueError(f"{folder}: the weights do not fit the {what} that config.json builds ({'; '.join(problems)})")


class VerifiedWeights:
    """Mixin before diffusers' ``ModelMixin``: ``save_pretrained`` records the weights' hashes and
    ``from_pretrained`` checks a folder before loading it (see the module docstring)."""

    def save_pretrained(self, save_directory, *args, **kwargs):
        folder = Path(save_directory)
        before = _weight_files(folder)
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            record_checksums(folder, before)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        folder = local_folder(pretrained_model_name_or_path, kwargs.get("subfolder"))
        if folder is not None:
            cls.check_folder(folder, kwargs.get("variant"), kwargs.get("use_safetensors"))
        with_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, output_loading_info=True, **kwargs)
        if info["missing_keys"]:
            raise ValueError(
                f"{folder or pretrained_model_name_or_path}: the weights miss {', '.join(sorted(info['missing_keys']))}: "
                f"refusing to initialise them at random"
            )
        return (model, info) if with_info else model

    @classmethod
    def check_folder(cls, folder: Path, variant: Optional[str] = None, use_safetensors: Optional[bool] = None) -> None:
        """Raise OSError/ValueError (one line, naming ``folder``) unless it loads as a ``cls``."""
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder")
        config = read_config(folder)
        files = weights_to_load(folder, variant, use_safetensors)
        check_hashes(folder, files)
        found = safetensors_shapes(folder, files)
        if not found and not any(f.endswith(".safetensors") for f in files):
            return  # a .bin checkpoint: diffusers reads it, its hash (if recorded) is checked
        with torch.device("meta"):
            model = cls.from_config(config)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        check_tensors(folder, found, expected, cls.__name__)
