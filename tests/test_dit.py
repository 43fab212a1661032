"""DiT and UViT: checkpoint compatibility with facebookresearch/DiT, initialisation, the frozen
position embedding, the adaLN ops on the Triton backend, input sizes and the UViT skip structure.
The contract every backbone keeps is in test_backbone_contract.py."""
import copy
from collections import OrderedDict

import numpy as np
import pytest
import torch

import xswin_fast.ops as ops
from families import spec, tiny
from helpers import forward_backward, meta_preset, model_inputs, randomize_, triton_adaln
from xswin_fast.flops import count_parameters
from xswin_fast.layers.attention import Attention, _softmax_attention
from xswin_fast.layers.embed import sincos_2d
from xswin_fast.models.dit import DIT_PRESETS, DiT, UViT

def official_dit_shapes(depth, hidden, patch, input_size=32, in_channels=4, num_classes=1000, learn_sigma=True):
    """Key -> shape of the state dict of facebookresearch/DiT ``models.py`` (timm PatchEmbed,
    Attention and Mlp; parameter-free LayerNorms), written out from the published architecture."""
    D, p, L = hidden, patch, (input_size // patch) ** 2
    out = in_channels * (2 if learn_sigma else 1)
    s = OrderedDict()
    s["pos_embed"] = (1, L, D)
    s["x_embedder.proj.weight"] = (D, in_channels, p, p)
    s["x_embedder.proj.bias"] = (D,)
    s["t_embedder.mlp.0.weight"] = (D, 256)
    s["t_embedder.mlp.0.bias"] = (D,)
    s["t_embedder.mlp.2.weight"] = (D, D)
    s["t_embedder.mlp.2.bias"] = (D,)
    s["y_embedder.embedding_table.weight"] = (num_classes + 1, D)
    for i in range(depth):
        b = f"blocks.{i}."
        s[b + "attn.qkv.weight"] = (3 * D, D)
        s[b + "attn.qkv.bias"] = (3 * D,)
        s[b + "attn.proj.weight"] = (D, D)
        s[b + "attn.proj.bias"] = (D,)
        s[b + "mlp.fc1.weight"] = (4 * D, D)
        s[b + "mlp.fc1.bias"] = (4 * D,)
        s[b + "mlp.fc2.weight"] = (D, 4 * D)
        s[b + "mlp.fc2.bias"] = (D,)
        s[b + "adaLN_modulation.1.weight"] = (6 * D, D)
        s[b + "adaLN_modulation.1.bias"] = (6 * D,)
    s["final_layer.linear.weight"] = (p * p * out, D)
    s["final_layer.linear.bias"] = (p * p * out,)
    s["final_layer.adaLN_modulation.1.weight"] = (2 * D, D)
    s["final_layer.adaLN_modulation.1.bias"] = (2 * D,)
    return s


OFFICIAL = {
    # name: (depth, hidden, patch, published trainable parameter count)
    "DiT-S/2": (12, 384, 2, 32.87e6),
    "DiT-XL/2": (28, 1152, 2, 674.8e6),
}


def build_preset(name, meta=False, **overrides):
    cls, kwargs = DIT_PRESETS[name]
    if meta:
        with torch.device("meta"):
            return cls(**{**kwargs, **overrides})
    return cls(**{**kwargs, **overrides})


# numpy 2-D sin-cos of DiT / MAE (models.py, get_2d_sincos_pos_embed)
def np_1d_sincos(embed_dim, pos):
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def np_2d_sincos(embed_dim, grid_size):
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape([2, 1, grid_size, grid_size])
    emb_h = np_1d_sincos(embed_dim // 2, grid[0])
    emb_w = np_1d_sincos(embed_dim // 2, grid[1])
    return np.concatenate([emb_h, emb_w], axis=1)


# checkpoint compatibility with facebookresearch/DiT


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_state_dict_is_official(name):
    depth, hidden, patch, _ = OFFICIAL[name]
    meta = name == "DiT-XL/2"  # 675M parameters: check structure without allocating them
    model = build_preset(name, meta=meta)
    expected = official_dit_shapes(depth, hidden, patch)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert set(got) == set(expected), (set(got) ^ set(expected))
    assert got == dict(expected)
    assert not model.pos_embed.requires_grad and isinstance(model.pos_embed, torch.nn.Parameter)

    device = "meta" if meta else "cpu"
    sd = {k: torch.randn(shape, device=device) for k, shape in expected.items()}
    result = model.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    if not meta:
        for k, v in model.state_dict().items():
            assert torch.equal(v, sd[k]), k


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_parameter_count_is_official(name):
    depth, hidden, patch, published = OFFICIAL[name]
    model = meta_preset(name)
    count = count_parameters(model)
    shapes = official_dit_shapes(depth, hidden, patch)
    assert count == sum(int(np.prod(s)) for k, s in shapes.items() if k != "pos_embed")
    assert abs(count - published) / published < 0.005


def test_meta_construction():
    model = build_preset("DiT-XL/2", meta=True)
    assert all(p.is_meta for p in model.parameters())
    # building on meta must not leave meta tensors in the shared sin-cos cache
    assert sincos_2d(1152, 16, 16).device.type == "cpu"
    torch.testing.assert_close(
        DiT(input_size=32, patch_size=2, hidden_size=1152, depth=1, num_heads=16).pos_embed[0],
        torch.from_numpy(np_2d_sincos(1152, 16)).float(),
        atol=1e-6,
        rtol=0,
    )


@pytest.mark.parametrize("hidden,input_size,patch", [(384, 32, 2), (64, 8, 2), (128, 16, 4)])
def test_pos_embed_matches_dit_numpy(hidden, input_size, patch):
    model = DiT(input_size=input_size, patch_size=patch, hidden_size=hidden, depth=1, num_heads=4)
    ref = torch.from_numpy(np_2d_sincos(hidden, input_size // patch)).float().unsqueeze(0)
    torch.testing.assert_close(model.pos_embed.data, ref, atol=1e-6, rtol=0)


def test_initialisation_is_dits():
    model = build_preset("DiT-S/2")
    for block in model.blocks:
        assert not block.adaLN_modulation[-1].weight.any() and not block.adaLN_modulation[-1].bias.any()
        assert not block.attn.qkv.bias.any() and not block.mlp.fc1.bias.any()
    fl = model.final_layer
    for p in (fl.linear.weight, fl.linear.bias, fl.adaLN_modulation[-1].weight, fl.adaLN_modulation[-1].bias):
        assert not p.any()
    assert not model.x_embedder.proj.bias.any()
    # xavier-uniform on the flattened (D, C*p*p) patch weight: bound sqrt(6 / (fan_in + fan_out))
    w = model.x_embedder.proj.weight
    bound = (6 / (384 + 4 * 2 * 2)) ** 0.5
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    qkv = model.blocks[0].attn.qkv.weight
    assert qkv.abs().max() <= (6 / (384 + 3 * 384)) ** 0.5
    assert abs(model.y_embedder.embedding_table.weight.std().item() - 0.02) < 0.002
    assert abs(model.t_embedder.mlp[0].weight.std().item() - 0.02) < 0.002
    # adaLN-Zero: the untrained model outputs exactly zero
    x, t, y = model_inputs(tiny(DiT))
    assert not tiny(DiT)(x, t, y).any()


# forward


def test_unpatchify_inverts_patch_layout():
    """A token's p*p*C features are (p, p, C)-ordered pixels of its patch, as in DiT."""
    model = tiny(DiT, learn_sigma=False, patch_size=2)
    img = torch.randn(2, 4, 8, 8)
    tokens = img.reshape(2, 4, 4, 2, 4, 2).permute(0, 2, 4, 3, 5, 1).reshape(2, 16, 16)
    assert torch.equal(model.unpatchify(tokens), img)


@pytest.mark.parametrize("cls", [DiT, UViT])
def test_forward_routes_adaln_through_ops(cls, monkeypatch):
    calls = {"layernorm_modulate": [], "gated_residual": []}
    for name in calls:
        original = getattr(ops, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            calls[_name].append(kwargs.get("backend"))
            return _original(*args, **kwargs)

        monkeypatch.setattr(ops, name, spy)
    model = randomize_(tiny(cls))
    model(*model_inputs(model))
    assert calls == {op: ["torch"] * n for op, n in spec(cls).adaln_ops(model).items()}


@pytest.mark.parametrize("cls", [DiT, UViT])
def test_pos_embed_stays_frozen_through_training(cls):
    model = tiny(cls).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(2):
        loss = model(*model_inputs(model)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model.pos_embed.grad is None  # frozen, as in DiT
    torch.testing.assert_close(model.pos_embed.data[0], sincos_2d(64, 4, 4))


def test_gradient_checkpointing_on_the_triton_backend():
    model = triton_adaln(randomize_(tiny(DiT)))
    inputs = model_inputs(model)
    plain = forward_backward(model, inputs)
    ckpt = forward_backward(copy.deepcopy(model).set_grad_checkpointing(True), inputs)
    torch.testing.assert_close(ckpt[0], plain[0])
    assert ckpt[1].keys() == plain[1].keys()
    for n in plain[1]:
        torch.testing.assert_close(ckpt[1][n], plain[1][n], msg=n)


def test_torch_compile_fullgraph_of_a_whole_model_training_step():
    """The adaLN projections, the fused forward and backward ops: a single graph."""
    model = triton_adaln(randomize_(tiny(DiT, class_dropout_prob=0.0)))
    inputs = model_inputs(model)
    eager = forward_backward(model, inputs)
    compiled = forward_backward(torch.compile(model, fullgraph=True, backend="aot_eager"), inputs)
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-6)
    grads = {n.removeprefix("_orig_mod."): g for n, g in compiled[1].items()}
    assert grads.keys() == eager[1].keys()
    for n in eager[1]:
        torch.testing.assert_close(grads[n], eager[1][n], rtol=1e-5, atol=1e-6, msg=n)


def test_bf16_weights_forward():
    model = randomize_(tiny(DiT)).eval().to(torch.bfloat16)
    x, t, y = model_inputs(model)
    out = model(x.bfloat16(), t, y)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


# input checks


@pytest.mark.parametrize("H,W", [(16, 16), (4, 4), (8, 6)])
def test_wrong_input_size_raises(H, W):
    model = tiny(DiT)
    with pytest.raises(ValueError, match="built for 8x8 latents.*pos_embed is fixed"):
        model(torch.randn(2, 4, H, W), torch.zeros(2), torch.zeros(2, dtype=torch.long))


def test_input_size_must_divide_by_patch():
    with pytest.raises(ValueError, match="divisible"):
        DiT(input_size=10, patch_size=4, hidden_size=64, depth=1, num_heads=4)


# UViT


def test_uvit_skip_structure_depth_12():
    model = UViT(input_size=8, patch_size=2, hidden_size=64, depth=12, num_heads=4, num_classes=10)
    with_skip = [i for i, b in enumerate(model.blocks) if b.skip_linear is not None]
    assert with_skip == [7, 8, 9, 10, 11]
    assert (model.encoders_n, model.decoders_n) == (5, 6)
    w = model.blocks[7].skip_linear
    assert w.weight.shape == (64, 128) and not w.bias.any()
    assert w.weight.abs().max() <= (6 / (128 + 64)) ** 0.5


@pytest.mark.parametrize("depth", range(1, 14))
def test_uvit_skips_balance(depth):
    with torch.device("meta"):
        model = UViT(input_size=8, patch_size=2, hidden_size=16, depth=depth, num_heads=2, num_classes=10)
    pushes = sum(i < model.encoders_n for i in range(depth))
    pops = sum(b.skip_linear is not None for b in model.blocks)
    assert pushes == pops == (depth - 1) // 2


@pytest.mark.parametrize("depth", [4, 5])
def test_uvit_uses_skips(depth):
    model = randomize_(tiny(UViT, depth=depth)).eval()
    x, t, y = model_inputs(model)
    model(x, t, y).square().sum().backward()
    for block in model.blocks:
        if block.skip_linear is not None:
            assert block.skip_linear.weight.grad[:, 64:].abs().sum() > 0  # the skip half


def test_uvit_s2_parameter_count():
    dit, uvit = meta_preset("DiT-S/2"), meta_preset("UViT-S/2")
    assert count_parameters(uvit) - count_parameters(dit) == 5 * (2 * 384 * 384 + 384)
    # every other key is DiT's, so UViT loads a DiT checkpoint with strict=False
    extra = set(uvit.state_dict()) - set(dit.state_dict())
    assert extra == {f"blocks.{i}.skip_linear.{w}" for i in range(7, 12) for w in ("weight", "bias")}


# presets


def test_presets():
    sizes = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
    expected = {f"{m}-{s}/{p}" for m in ("DiT", "UViT") for s in sizes for p in (2, 4, 8)}
    assert set(DIT_PRESETS) == expected
    for name in expected:
        model = meta_preset(name)
        arch, rest = name.split("-")
        size, patch = rest.split("/")
        assert type(model).__name__ == arch
        depth, hidden, heads = sizes[size]
        assert (len(model.blocks), model.hidden_size, model.blocks[0].attn.num_heads) == (depth, hidden, heads)
        assert (model.patch_size, model.input_size, model.num_classes) == (int(patch), 32, 1000)
        assert model.out_channels == 8 and model.learn_sigma
    small_s = build_preset("DiT-S/2", meta=True, input_size=8, num_classes=101)
    assert small_s.pos_embed.shape == (1, 16, 384) and small_s.y_embedder.embedding_table.num_embeddings == 102


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_global_attention_keeps_a_non_finite_query_row_non_finite(value):
    # SDPA's CPU kernel turns a NaN/Inf query row into a finite one; softmax attention gives NaN.
    # A non-finite bias of head 0's queries makes every query of head 0 non-finite: every output
    # mixes head 0 through proj, so every output is NaN, and without it the same layer is finite.
    torch.manual_seed(0)
    attn = Attention(8, 2)
    x = torch.randn(2, 5, 8)
    assert torch.isfinite(attn(x)).all()
    with torch.no_grad():
        attn.qkv.bias[0] = value
    assert torch.isnan(attn(x)).all()


def test_global_attention_fallback_matches_sdpa():
    q, k, v = (torch.randn(2, 3, 7, 8, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(_softmax_attention(q, k, v), torch.nn.functional.scaled_dot_product_attention(q, k, v))
