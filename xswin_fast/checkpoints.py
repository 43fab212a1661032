"""Checkpoints: atomic writes, data-only loads, RNG capture, newest-good lookup.

* ``save_checkpoint`` writes to a temporary file in the same directory, flushes and fsyncs it,
  then ``os.replace``-s it onto the final name and fsyncs the directory: a crash or kill at any
  moment leaves either the old file or the complete new one, never a torn file.
* ``load_checkpoint`` uses ``torch.load(weights_only=True)``: a checkpoint is data (tensors,
  dicts, lists, numbers, strings), never code. A file whose pickle references any other object
  is refused with :class:`CheckpointError`.
* RNG states (torch CPU, CUDA, numpy, python) are stored as tensors and plain numbers, so they
  pass the weights-only loader.
* Every checkpoint holds a SHA-256 checksum of its content (the "checksum" entry), verified on
  load: a flipped bit loads silently otherwise, since the zip reader checks no CRC.
* A failed write (a full disk) raises the OSError of the write itself, which ``torch.save``
  would otherwise turn into a RuntimeError ("unexpected pos"); the previous file stays.
* :func:`check_train_checkpoint` and :func:`load_weights` turn a checkpoint that loads but does
  not hold what train.py wrote (a missing entry, a step that is no integer, a weight of another
  shape) into a :class:`CheckpointError` naming the file and the entry.
"""
import hashlib
import json
import os
import pickle
import random
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

PathLike = Union[str, os.PathLike]
CHECKPOINT_RE = re.compile(r"^(\d{7,})\.pt$")


CHECKSUM_KEY = "checksum"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded: unreadable, torn, corrupted (checksum), or containing
    pickled code."""


def content_checksum(obj: Any) -> str:
    """"sha256:<hex>" over ``obj``: nested dicts, lists and tuples of tensors (dtype, shape and
    bytes) and plain values (type and repr), in order."""
    h = hashlib.sha256()
    _feed(h, obj)
    return "sha256:" + h.hexdigest()


def _feed(h, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__}{len(obj)}".encode())
        for v in obj:
            _feed(h, v)
    else:
        h.update(f"V{type(obj).__name__}:{obj!r};".encode())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


class _WriteErrors:
    """A binary file whose first failed ``write`` is kept: ``torch.save`` reports it only as a
    RuntimeError without the errno."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self.f.flush()


def save_checkpoint(obj: Dict[str, Any], path: PathLike) -> Path:
    """Write ``obj`` and its checksum to ``path`` atomically (temp file + fsync + os.replace +
    directory fsync). A full disk or an unwritable folder raises an OSError naming ``path``."""
    path = Path(path)
    obj = {**obj, CHECKSUM_KEY: content_checksum(obj)}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            writer = _WriteErrors(f)
            try:
                torch.save(obj, writer)
            except RuntimeError as exc:
                if writer.error is None:
                    raise
                raise writer.error from exc
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename is None:  # torch.save's name none
            exc.filename = str(path)
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """Load a checkpoint as data only (``weights_only=True``); raise CheckpointError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if not zipfile.is_zipfile(path):  # random bytes fail the weights-only unpickler too: not code
            raise CheckpointError(f"checkpoint {path} is unreadable: not a torch.save archive (damaged, or another "
                                  "kind of file)") from exc
        raise CheckpointError(
            f"refusing to load {path}: it contains pickled objects or code, not only tensors and plain data "
            f"(torch.load(weights_only=True) rejected it: {str(exc).splitlines()[0]}). Checkpoints are data, "
            "never code; re-save it as plain state dicts if you trust its origin."
        ) from exc
    except Exception as exc:  # truncated or corrupted archives
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(ckpt).__name__}, expected a dict")
    stored = ckpt.pop(CHECKSUM_KEY, None)  # checkpoints from before the checksum have none
    if stored is not None and stored != content_checksum(ckpt):
        raise CheckpointError(f"checkpoint {path} is corrupted: its content does not match its checksum")
    return ckpt


# what train.py writes into every checkpoint, and the type each entry must have
TRAIN_ENTRIES = {
    "model": dict, "ema": dict, "opt": dict, "lr_scheduler": dict, "step": int, "epoch": int, "batch_in_epoch": int,
    "world_size": int, "rng": list, "args": dict, "model_name": str, "model_kwargs": dict, "data": dict,
}


def check_train_checkpoint(ckpt: Dict[str, Any], path: PathLike, needs=tuple(TRAIN_ENTRIES)) -> None:
    """CheckpointError naming ``path`` and the first of the entries ``needs`` (names of
    :data:`TRAIN_ENTRIES`) that ``ckpt`` lacks or holds with another type (a bool is no int)."""
    for key in needs:
        kind = TRAIN_ENTRIES[key]
        if key not in ckpt:
            raise CheckpointError(f"{path} is not a complete train.py checkpoint: it has no {key!r} entry")
        value = ckpt[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise CheckpointError(f"{path}: its {key!r} entry must be a {kind.__name__}, got {type(value).__name__} {value!r:.40}")


def load_weights(module: torch.nn.Module, state_dict: Dict[str, Any], path: PathLike, key: str) -> None:
    """``module.load_state_dict(state_dict)``; a missing, unexpected or wrongly shaped tensor is a
    CheckpointError naming ``path`` and its entry ``key``, not a traceback."""
    try:
        module.load_state_dict(state_dict)
    except (RuntimeError, KeyError, TypeError) as exc:
        first = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()), str(exc))
        raise CheckpointError(f"{path}: the {key!r} weights do not fit the model: {first}") from exc


def plain_data(obj: Any) -> Any:
    """``obj`` through a JSON round trip (anything else as its ``str``): plain data that the
    weights-only loader accepts, e.g. a run config or a scheduler config."""
    return json.loads(json.dumps(obj, default=str))


def checkpoint_path(checkpoint_dir: PathLike, step: int) -> Path:
    return Path(checkpoint_dir) / f"{step:07d}.pt"


def list_checkpoints(checkpoint_dir: PathLike) -> List[Path]:
    """Step-numbered checkpoints in ``checkpoint_dir``, oldest first."""
    d = Path(checkpoint_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := CHECKPOINT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def load_newest_checkpoint(target: PathLike, map_location="cpu") -> Tuple[Path, Dict[str, Any]]:
    """Load ``target`` if it is a file, else the newest loadable checkpoint under it.

    ``target`` may be a checkpoint file, a ``checkpoints/`` directory or a run directory.
    Unloadable newer files are skipped with a warning (they cannot come from our atomic
    writer, but disks fail).
    """
    target = Path(target)
    if target.is_file():
        return target, load_checkpoint(target, map_location)
    ckpt_dir = target / "checkpoints" if (target / "checkpoints").is_dir() else target
    errors = []
    for p in reversed(list_checkpoints(ckpt_dir)):
        try:
            return p, load_checkpoint(p, map_location)
        except CheckpointError as exc:
            warnings.warn(f"skipping unloadable checkpoint: {exc}")
            errors.append(exc)
    if not errors:
        raise CheckpointError(f"no loadable checkpoint found under {target} (no NNNNNNN.pt file)")
    raise CheckpointError(f"no loadable checkpoint found under {target}: all {len(errors)} are unloadable, the newest: "
                          f"{errors[0]}")


def prune_checkpoints(checkpoint_dir: PathLike, keep_last: int) -> None:
    """Delete all but the ``keep_last`` newest step checkpoints (``keep_last <= 0`` keeps all)."""
    if keep_last <= 0:
        return
    for p in list_checkpoints(checkpoint_dir)[:-keep_last]:
        p.unlink(missing_ok=True)


def capture_rng_state(device: Optional[torch.device] = None) -> Dict[str, Any]:
    """The torch (CPU and CUDA), numpy and python RNG states as weights-only-loadable data."""
    version, py_state, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state = {
        "torch": torch.get_rng_state(),
        "cuda": None,
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64), "gauss": gauss},
    }
    if device is not None and torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: Dict[str, Any], device: Optional[torch.device] = None) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and device is not None and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
    npst = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": npst["key"].numpy().astype(np.uint32), "pos": int(npst["pos"])},
            "has_gauss": int(npst["has_gauss"]),
            "gauss": float(npst["gauss"]),
        }
    )
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
