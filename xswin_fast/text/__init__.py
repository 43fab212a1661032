"""Text conditioning: frozen Hugging Face text encoders, caption embeddings and their cache."""
from .cache import cached_text_embeddings, text_cache_key
from .embeddings import TextEmbeddings
from .encoder import DEFAULT_MAX_LENGTH, MINILM, TEXT_DTYPES, TextEncoder, load_text_encoder, resolve_text_encoder

__all__ = [
    "TextEmbeddings", "TextEncoder", "load_text_encoder", "resolve_text_encoder", "cached_text_embeddings",
    "text_cache_key", "MINILM", "TEXT_DTYPES", "DEFAULT_MAX_LENGTH",
]
