"""The text-embedding cache: every distinct caption of a dataset encoded once, stored beside the
data (fast-DiT's latent-cache pattern for the text side).

A cache file ``text-<key>.pt`` holds ``{"key", "encoder", "dtype", "max_length", "captions",
"hidden", "mask", "pooled"}``; ``key`` (:func:`text_cache_key`) hashes the encoder, its dtype,
the token limit and the captions, so another encoder or an edited caption misses and is
encoded anew, while a run of the same data and encoder loads the file without loading the
encoder at all. The file is written atomically with a checksum (``checkpoints.save_checkpoint``).
"""
import hashlib
import json
import logging
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

from ..checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from .embeddings import TextEmbeddings
from .encoder import TextEncoder

logger = logging.getLogger(__name__)

CACHE_FOLDER = ".text-cache"  # the default cache folder, inside the captioned data's folder


def text_cache_key(encoder: str, dtype: str, max_length: int, captions: Sequence[str]) -> str:
    """A hash of the encoder spec (hub id, folder or name), its dtype ("fp32", ...), the token
    limit and the captions in order: the cache file's name."""
    h = hashlib.sha256(json.dumps([encoder, dtype, max_length]).encode())
    for caption in captions:
        h.update(caption.encode() + b"\0")
    return h.hexdigest()[:16]


def cached_text_embeddings(
    captions: Sequence[str], encoder: str, dtype: str, max_length: int, cache_dir: Path,
    load_encoder: Callable[[], TextEncoder], wait: Optional[Callable[[], None]] = None, write: bool = True,
) -> Tuple[TextEmbeddings, bool]:
    """The embeddings of ``captions`` (distinct str) by ``encoder`` (its spec, as recorded) in
    ``dtype`` cut at ``max_length`` tokens, on the CPU, from ``cache_dir/text-<key>.pt``, and
    whether the file was there (a hit). On a miss the process with ``write`` (rank 0) calls
    ``load_encoder()``, encodes and writes the file; ``wait`` (a barrier) lets the other ranks
    load it after. A file that does not load or holds other captions is rebuilt."""
    key = text_cache_key(encoder, dtype, max_length, captions)
    path = Path(cache_dir) / f"text-{key}.pt"
    cached = _load(path, key, captions)
    if cached is not None:
        logger.info(f"text embeddings: {len(captions)} captions from the cache {path}")
        if wait is not None:
            wait()
        return cached, True
    if write:
        logger.info(f"text embeddings: encoding {len(captions)} captions with {encoder} ({dtype}) into {path}")
        emb = load_encoder().encode(list(captions)).to("cpu")
        save_checkpoint({"key": key, "encoder": encoder, "dtype": dtype, "max_length": max_length,
                         "captions": list(captions), "hidden": emb.hidden, "mask": emb.mask, "pooled": emb.pooled}, path)
    if wait is not None:
        wait()
    if not write:
        emb = _load(path, key, captions)
        if emb is None:
            raise CheckpointError(f"the text cache {path} was not written by rank 0")
    return emb, False


def _load(path: Path, key: str, captions: Sequence[str]) -> Optional[TextEmbeddings]:
    if not path.is_file():
        return None
    try:
        saved = load_checkpoint(path)
    except CheckpointError as exc:
        logger.warning(f"text cache {path} is unreadable ({exc}); encoding again")
        return None
    if saved.get("key") != key or saved.get("captions") != list(captions):
        logger.warning(f"text cache {path} holds other captions; encoding again")
        return None
    return TextEmbeddings(saved["hidden"], saved["mask"], saved["pooled"])
