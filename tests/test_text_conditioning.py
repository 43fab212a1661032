"""Text conditioning on every family (``layers/text.py``, docs/backbones.md "Text conditioning"):
``model(x, t, y, encoder_hidden_states, encoder_attention_mask, pooled_text)`` trains with both
fusions where defined, the class-only model is unchanged, masked tokens contribute exactly
nothing (Inf and NaN included), the all-masked caption is the null caption, bad input is named,
and the papers' text-to-image presets have the papers' sizes. Tiny models, CPU only."""
import json

import pytest
import torch

import xswin_fast
from families import FAMILIES, tiny
from helpers import model_inputs, randomize_
from xswin_fast import DiT, IUViT, UViT, create_model
from xswin_fast.layers.text import TextCrossAttention, TextEmbedder

family = pytest.mark.parametrize("cls", FAMILIES, ids=lambda c: c.__name__)
# the families whose self-attention is global and takes GLIDE's fused text keys and values
FUSED = (DiT, UViT, IUViT)
TEXT_DIM, L = 12, 5


def text_inputs(B: int = 4, seed: int = 1, dtype=torch.float32):
    """encoder_hidden_states (B, L, TEXT_DIM) and a mask (B, L) bool: row 0 keeps 3 tokens, row 1
    one, row 2 none (a null caption), row 3 and later every token."""
    g = torch.Generator().manual_seed(seed)
    ehs = torch.randn(B, L, TEXT_DIM, generator=g).to(dtype)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 3:] = False
    mask[1, 1:] = False
    mask[2:3] = False
    return ehs, mask


def image_inputs(model, B: int = 4):
    """x (B, in_channels, 8, 8) and t (B,) for a model without labels."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, model.in_channels, 8, 8, generator=g), torch.randint(0, 1000, (B,), generator=g)


def text_model(cls, **overrides):
    """A tiny text model of ``cls`` with every parameter perturbed (at initialisation the text
    output projections are zero, which would make the comparisons below vacuous)."""
    return randomize_(tiny(cls, text_dim=TEXT_DIM, **overrides)).eval()


def fusions(cls):
    return ("separate", "fused") if cls in FUSED else ("separate",)


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@family
def test_every_family_trains_with_text_and_the_null_caption(cls):
    for fusion in fusions(cls):
        model = text_model(cls, text_fusion=fusion).train()
        x, t, y = model_inputs(model, B=4)
        ehs, mask = text_inputs()
        out = model(x, t, y, ehs, mask)
        assert out.shape == (4, model.out_channels, 8, 8) and torch.isfinite(out).all()
        out.square().mean().backward()
        g = grads(model)
        assert all(torch.isfinite(v).all() for v in g.values())
        text_params = [n for n, _ in model.named_parameters() if "text" in n or "cross_attn" in n]
        assert text_params and all(g.get(n) is not None and g[n].abs().sum() > 0 for n in text_params), fusion


@family
def test_windowed_families_refuse_the_fused_variant_by_name(cls):
    if cls in FUSED:
        assert tiny(cls, text_dim=TEXT_DIM, text_fusion="fused").text_fusion == "fused"
        return
    with pytest.raises(ValueError, match="text_fusion='fused' is not defined for"):
        tiny(cls, text_dim=TEXT_DIM, text_fusion="fused")


@family
def test_a_text_only_model_takes_no_labels(cls):
    model = text_model(cls, num_classes=0)
    assert model.y_embedder is None
    x, t = image_inputs(model)
    ehs, mask = text_inputs()
    out = model(x, t, None, ehs, mask)
    assert out.shape[0] == 4 and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="y must be None: the model was built with num_classes=0"):
        model(x, t, torch.zeros(4, dtype=torch.long), ehs, mask)
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        tiny(cls, num_classes=0)


@family
def test_the_class_only_model_is_unchanged(cls, tmp_path):
    """text_dim=0 builds the same modules and keys, and a folder saved before text existed (no
    text keys in config.json) loads and computes the same."""
    torch.manual_seed(0)
    default = tiny(cls)
    torch.manual_seed(0)
    explicit = tiny(cls, text_dim=0, text_fusion="separate")
    assert {k: v.shape for k, v in default.state_dict().items()} == {k: v.shape for k, v in explicit.state_dict().items()}
    assert not any("text" in n or "cross_attn" in n for n, _ in default.named_modules())
    model = randomize_(default).eval()
    inputs = model_inputs(model)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key in ("text_dim", "text_width", "text_fusion"):
        config.pop(key)
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = xswin_fast.from_pretrained(str(tmp_path)).set_backend("torch").eval()
    assert loaded.text_dim == 0 and loaded.text_embedder is None
    torch.testing.assert_close(loaded(*inputs), model(*inputs), rtol=0, atol=0)


@family
def test_a_separate_text_model_starts_as_the_class_model(cls):
    """The MHCA output projections and the pooled projection start at zero: loaded with a class
    model's weights, a text model computes the class model's output exactly, for any caption.
    IU-ViT is the exception: its pooled text is one more token, which the attention sees."""
    if cls is IUViT:
        pytest.skip("IU-ViT's pooled text is an extra token (docs/backbones.md)")
    torch.manual_seed(0)
    class_model = randomize_(tiny(cls)).eval()
    text = tiny(cls, text_dim=TEXT_DIM).eval()
    missing, unexpected = text.load_state_dict(class_model.state_dict(), strict=False)
    assert not unexpected and missing and all("text" in k or "cross_attn" in k for k in missing)
    x, t, y = model_inputs(class_model, B=4)
    ehs, mask = text_inputs()
    torch.testing.assert_close(text(x, t, y, ehs, mask), class_model(x, t, y), rtol=0, atol=0)


@family
def test_masked_tokens_contribute_nothing_even_inf_and_nan(cls):
    for fusion in fusions(cls):
        model = text_model(cls, text_fusion=fusion)
        x, t, y = model_inputs(model, B=4)
        ehs, mask = text_inputs()
        # the masked entries hold NaN, Inf and -Inf in turn
        poison = torch.tensor([float("nan"), float("inf"), -float("inf")]).repeat(ehs.numel())[: ehs.numel()]
        results = []
        for fill in (torch.zeros(()), poison.view(ehs.shape)):
            poisoned = torch.where(mask[..., None], ehs, fill).requires_grad_(True)
            model.zero_grad()
            out = model(x, t, y, poisoned, mask)
            out.square().mean().backward()
            results.append((out.detach(), grads(model), poisoned.grad.clone()))
        clean_out, clean_grads, clean_input_grad = results[0]
        assert torch.isfinite(clean_out).all()
        assert (clean_input_grad[~mask] == 0).all()  # a masked token gets no gradient
        out, g, input_grad = results[1]
        torch.testing.assert_close(out, clean_out, rtol=0, atol=0)
        torch.testing.assert_close(input_grad, clean_input_grad, rtol=0, atol=0)
        assert g.keys() == clean_grads.keys()
        for name in g:
            torch.testing.assert_close(g[name], clean_grads[name], rtol=0, atol=0, msg=name)


@family
def test_the_all_masked_caption_is_the_null_caption(cls):
    """A row that keeps no token gives the same output whatever its tokens hold, finite; its
    pooled vector is the learned null_text."""
    for fusion in fusions(cls):
        model = text_model(cls, text_fusion=fusion)
        x, t, y = model_inputs(model, B=4)
        ehs, mask = text_inputs()
        other = ehs.clone()
        other[2] = torch.randn(L, TEXT_DIM) * 100
        out = model(x, t, y, ehs, mask)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(model(x, t, y, other, mask)[2], out[2], rtol=0, atol=0)
        # an explicit pooled vector is replaced by null_text too on the null row
        pooled = torch.randn(4, TEXT_DIM)
        with_pooled = model(x, t, y, ehs, mask, pooled)
        torch.testing.assert_close(with_pooled[2], out[2], rtol=0, atol=0)
        assert not torch.equal(with_pooled[0], out[0])
        with torch.no_grad():
            model.text_embedder.null_text.add_(1.0)
        moved = model(x, t, y, ehs, mask)
        assert not torch.equal(moved[2], out[2])
        torch.testing.assert_close(moved[[0, 1, 3]], out[[0, 1, 3]], rtol=0, atol=0)


def test_the_cross_attention_of_a_null_caption_is_exactly_zero_with_finite_gradients():
    torch.manual_seed(0)
    layer = TextCrossAttention(16, 2, 8)
    torch.nn.init.normal_(layer.proj.weight)
    x = torch.randn(3, 4, 4, 16, requires_grad=True)
    context = torch.randn(3, 6, 8)
    context[1] = float("nan")
    keep = torch.ones(3, 6, dtype=torch.bool)
    keep[1] = False
    keep[2, 2:] = False
    out = layer(x, context, keep)
    assert out.shape == x.shape
    assert (out[1] == 0).all() and (out[[0, 2]] != 0).any()
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters()) and torch.isfinite(x.grad).all()
    assert (x.grad[1] == 0).all()


def test_pooled_text_defaults_to_the_mean_of_the_kept_tokens_and_null_rows_to_null_text():
    torch.manual_seed(0)
    embedder = TextEmbedder(TEXT_DIM, 16, 8)
    ehs, mask = text_inputs()
    mean = torch.stack([ehs[i][mask[i]].mean(0) if mask[i].any() else embedder.null_text for i in range(4)])
    torch.testing.assert_close(embedder(ehs, mask).pooled, embedder.pooled_proj(mean))
    torch.testing.assert_close(embedder(ehs, None).pooled, embedder.pooled_proj(ehs.mean(1)))


@pytest.mark.parametrize("cls", [DiT, xswin_fast.XSwin], ids=lambda c: c.__name__)
def test_mask_and_text_dtypes(cls):
    """A {0, 1} integer mask is the bool mask; half-precision encodings are cast to the model's
    dtype inside the model (exact here: fp16 values are fp32 values)."""
    model = text_model(cls)
    x, t, y = model_inputs(model, B=4)
    ehs, mask = text_inputs(dtype=torch.float16)
    out = model(x, t, y, ehs, mask)
    torch.testing.assert_close(model(x, t, y, ehs.float(), mask.long()), out, rtol=0, atol=0)
    torch.testing.assert_close(model(x, t, y, ehs.float(), mask.int()), out, rtol=0, atol=0)
    ones = model(x, t, y, ehs, torch.ones(4, L, dtype=torch.bool))
    torch.testing.assert_close(model(x, t, y, ehs), ones, rtol=0, atol=0)


@pytest.mark.parametrize("cls", FUSED, ids=lambda c: c.__name__)
def test_forward_with_cfg_passes_the_text_halves_through(cls):
    model = text_model(cls)
    x, t, y = model_inputs(model, B=2)
    ehs, mask = text_inputs(B=2)
    mask[1] = False  # the unconditional half: the null caption
    y = torch.tensor([3, model.num_classes])
    guided = model.forward_with_cfg(x, t, y, 2.5, None, ehs, mask)
    out = model(torch.cat([x[:1], x[:1]]), t, y, ehs, mask)
    expected = out[1, :4] + 2.5 * (out[0, :4] - out[1, :4])
    torch.testing.assert_close(guided[0, :4], expected, rtol=0, atol=0)
    torch.testing.assert_close(guided[1, :4], guided[0, :4], rtol=0, atol=0)
    torch.testing.assert_close(guided[:, 4:], out[:, 4:], rtol=0, atol=0)
    with pytest.raises(TypeError, match="cfg_scale must be a float, got None"):
        model.forward_with_cfg(x, t, y, encoder_hidden_states=ehs)


@family
def test_a_text_model_round_trips_through_a_diffusers_folder(cls, tmp_path):
    model = text_model(cls, num_classes=0, text_width=8)
    x, t = image_inputs(model)
    ehs, mask = text_inputs()
    model.save_pretrained(tmp_path)
    loaded = xswin_fast.from_pretrained(str(tmp_path)).set_backend("torch").eval()
    assert (loaded.text_dim, loaded.text_width, loaded.num_classes) == (TEXT_DIM, 8, 0)
    torch.testing.assert_close(loaded(x, t, None, ehs, mask), model(x, t, None, ehs, mask), rtol=0, atol=0)


@pytest.mark.parametrize("cls", FAMILIES, ids=lambda c: c.__name__)
@torch.no_grad()
def test_text_models_keep_diffusers_memory_hooks_exact(cls):
    """No parameter of the text modules is read outside its own module: sequential offload
    (parameters on the meta device outside their forward) gives the plain model's output, and
    layerwise casting (fp8 storage, bf16 compute) equals the plain model with rounded weights."""
    import copy

    from test_memory_hooks import STORAGE, sequential_offload

    torch.manual_seed(0)
    plain = text_model(cls, num_classes=0)
    x, t = image_inputs(plain)
    ehs, mask = text_inputs()
    offloaded = sequential_offload(copy.deepcopy(plain))
    torch.testing.assert_close(offloaded(x, t, None, ehs, mask), plain(x, t, None, ehs, mask), rtol=0, atol=0)

    plain = plain.to(torch.bfloat16)
    cast = copy.deepcopy(plain)
    cast.enable_layerwise_casting(storage_dtype=STORAGE, compute_dtype=torch.bfloat16)
    stored = {n for n, p in cast.named_parameters() if p.dtype == STORAGE}
    assert any("text" in n or "cross_attn" in n for n in stored)
    got = cast(x.bfloat16(), t, None, ehs, mask)
    for n, p in plain.named_parameters():
        if n in stored:
            p.copy_(p.to(STORAGE).to(torch.bfloat16))
    torch.testing.assert_close(got, plain(x.bfloat16(), t, None, ehs, mask), rtol=0, atol=0)


def _bad_inputs():
    ehs, mask = text_inputs(B=2)
    return {
        "text to a class-only model": ({}, dict(encoder_hidden_states=ehs), ValueError,
                                       "encoder_hidden_states was given to a class-only model"),
        "pooled text to a class-only model": ({}, dict(pooled_text=ehs[:, 0]), ValueError,
                                              "pooled_text was given to a class-only model"),
        "no text to a text model": (dict(text_dim=TEXT_DIM), {}, ValueError, "encoder_hidden_states is required"),
        "wrong text width": (dict(text_dim=TEXT_DIM), dict(encoder_hidden_states=ehs[..., :7]), ValueError,
                             r"encoder_hidden_states must have shape \(B, L >= 1, text_dim\) = \(2, L, 12\)"),
        "no token": (dict(text_dim=TEXT_DIM), dict(encoder_hidden_states=ehs[:, :0]), ValueError,
                     "encoder_hidden_states must have shape"),
        "integer text": (dict(text_dim=TEXT_DIM), dict(encoder_hidden_states=ehs.long()), TypeError,
                         "encoder_hidden_states must be a floating-point tensor"),
        "mask shape": (dict(text_dim=TEXT_DIM), dict(encoder_hidden_states=ehs, encoder_attention_mask=mask[:, :3]),
                       ValueError, r"encoder_attention_mask must have shape \(B, L\) = \(2, 5\)"),
        "float mask": (dict(text_dim=TEXT_DIM), dict(encoder_hidden_states=ehs, encoder_attention_mask=mask.float()),
                       TypeError, "encoder_attention_mask must be a bool or integer tensor"),
        "mask values": (dict(text_dim=TEXT_DIM), dict(encoder_hidden_states=ehs, encoder_attention_mask=mask.long() * 2),
                        ValueError, "encoder_attention_mask must hold only 0 and 1"),
        "pooled shape": (dict(text_dim=TEXT_DIM), dict(encoder_hidden_states=ehs, pooled_text=ehs[:, :, 0]),
                         ValueError, r"pooled_text must have shape \(B, text_dim\) = \(2, 12\)"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
def test_bad_text_input_is_named(case):
    build, kwargs, exc, match = _bad_inputs()[case]
    model = tiny(DiT, **build)
    x, t, y = model_inputs(model)
    with pytest.raises(exc, match=match):
        model(x, t, y, **kwargs)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(text_dim=-1), ValueError, "text_dim must be >= 0"),
    (dict(text_dim=8.0), TypeError, "text_dim must be an int"),
    (dict(text_dim=8, text_width=0), ValueError, "text_width must be >= 1"),
    (dict(text_dim=8, text_fusion="concat"), ValueError, "text_fusion must be one of"),
])
@family
def test_bad_text_settings_are_named(cls, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        tiny(cls, **kwargs)


def _parameters(name: str, **overrides) -> int:
    with torch.device("meta"):
        model = create_model(name, **overrides)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_iuvit_t2i_preset_matches_table5():
    """Table 5, CC12M 64x64: patch 4, 17 layers, width 1024, 16 heads, 307M without the text
    encoder. T5-XXL's 4096-wide encodings are projected to the table's "text encoder width" 1024
    once; feeding them to every MHCA unprojected would give 432.5M (+41%)."""
    n = _parameters("IUViT-T2I-CC12M64")
    assert n == 312_734_403
    assert abs(n / 307e6 - 1) < 0.05
    assert _parameters("IUViT-T2I-CC12M64", text_width=4096) / 307e6 - 1 > 0.4
    with torch.device("meta"):
        model = create_model("IUViT-T2I-CC12M64")
    assert (model.input_size, model.patch_size, model.depth, model.hidden_size, model.num_heads) == (64, 4, 17, 1024, 16)
    assert (model.text_dim, model.text_width, model.num_classes, model.text_fusion) == (4096, 1024, 0, "separate")


def test_ascend_t2i_preset_matches_table6():
    """Table 6, T2I-128: channels 192, depth 3, multiples 1,2,3,4,4, attention at 64..8 px, text
    width 1024; ~590M without the text encoder. One MHCA per SwinPair (the paper's "SwinBlock");
    one in each of its two window layers would add the same again and miss 590M by more than 5%."""
    n = _parameters("ASCEND-T2I-128")
    assert n == 615_205_125
    assert abs(n / 590e6 - 1) < 0.05
    with torch.device("meta"):
        model = create_model("ASCEND-T2I-128")
    mhca = sum(p.numel() for m in model.modules() if isinstance(m, TextCrossAttention) for p in m.parameters())
    assert (n + mhca) / 590e6 - 1 > 0.05
    assert model.input_size == 128 and model.text_dim == 4096 and model.num_classes == 0
    assert not any(isinstance(m, TextCrossAttention) for m in model.decoder.modules())


def test_the_flop_table_runs_the_text_presets():
    """Tools that run any preset give it ``example_conditions``: labels or none, and 256 text tokens."""
    from xswin_fast.flops import preset_table

    table = preset_table(256, ["IUViT-T2I-CC12M64", "ASCEND-T2I-128"])
    assert "| IUViT-T2I-CC12M64 (64-px images) | 312.73 |" in table
    assert "| ASCEND-T2I-128 (128-px images) | 615.21 |" in table
