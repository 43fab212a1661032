"""What the text-to-image tests share: tiny randomly initialised text encoders (BERT, T5, CLIP)
saved as Hugging Face folders with an offline word-piece tokenizer, and tiny captioned folders."""
from pathlib import Path

import numpy as np

from xswin_fast.data import write_captioned_folder

TEXT_DIM = 16
WORDS = ["a", "the", "of", "pair", "trousers", "handwritten", "digit", "number", "seven", "one", "two", "three",
         "zero", "four", "five", "six", "eight", "nine", "blurry", "scan", "written", "by", "hand", "numeral", "picture",
         "someone", "wrote", "photo", "sneaker"] + [str(i) for i in range(10)]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_tokenizer(folder: Path):
    """A BertTokenizer over :data:`WORDS` (and single letters), saved into ``folder``."""
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + WORDS + list("abcdefghijklmnopqrstuvwxyz")) + "\n")
    tokenizer = BertTokenizer(str(vocab), model_max_length=64)
    tokenizer.save_pretrained(folder)
    return tokenizer


def tiny_encoder(folder: Path, kind: str = "bert") -> str:
    """A randomly initialised ``kind`` ("bert", "t5", "clip") text encoder of width
    :data:`TEXT_DIM` and its tokenizer saved in ``folder``; returns the folder as a str."""
    import torch
    import transformers

    from xswin_fast.compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    tokenizer = tiny_tokenizer(folder)
    n = len(tokenizer)
    torch.manual_seed(0)
    if kind == "bert":
        config = transformers.BertConfig(vocab_size=n, hidden_size=TEXT_DIM, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32, max_position_embeddings=64)
        model = transformers.BertModel(config)
    elif kind == "t5":
        config = transformers.T5Config(vocab_size=n, d_model=TEXT_DIM, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                       pad_token_id=tokenizer.pad_token_id)
        model = transformers.T5EncoderModel(config)
    elif kind == "clip":
        config = transformers.CLIPTextConfig(vocab_size=n, hidden_size=TEXT_DIM, intermediate_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, max_position_embeddings=64,
                                             pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
                                             eos_token_id=tokenizer.sep_token_id)
        model = transformers.CLIPTextModel(config)
    else:
        raise ValueError(kind)
    model.save_pretrained(folder)
    return str(folder)


def tiny_captioned_digits(folder: Path, n: int = 40, size: int = 8) -> Path:
    """``n`` of sklearn's digits as a captioned folder (three captions each) at ``size`` pixels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images[:n] / 16 * 255).round().astype(np.uint8)
    if size != 8:
        from PIL import Image

        images = np.stack([np.asarray(Image.fromarray(im).resize((size, size))) for im in images])
    return write_captioned_folder(str(folder), images, d.target[:n].tolist(), "digits")
