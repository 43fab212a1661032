"""DiT and UViT: checkpoint compatibility with facebookresearch/DiT, shapes, CFG, training,
gradient checkpointing, mixed precision, input checks and the UViT skip structure."""
from collections import OrderedDict

import numpy as np
import pytest
import torch

import xswin_fast.ops as ops
from xswin_fast.layers.embed import sincos_2d
from xswin_fast.models.dit import DIT_PRESETS, DiT, DiTBlock, FinalLayer, UViT

SMALL = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=3, num_heads=4, num_classes=10)


def small(cls=DiT, **overrides):
    # the torch backend keeps these tests fast under TRITON_INTERPRET=1 once kernels exist
    return cls(**{**SMALL, **overrides}).set_backend("torch")


@torch.no_grad()
def randomize_(model, std=0.05):
    """Give every trainable parameter random values: at DiT's init the adaLN and output layers are
    zero, so the output is identically zero and most comparisons would be vacuous."""
    for p in model.parameters():
        if p.requires_grad:
            p.normal_(0, std)
    return model


def inputs(model, B=4):
    S = model.input_size
    x = torch.randn(B, model.in_channels, S, S)
    t = torch.randint(0, 1000, (B,))
    y = torch.randint(0, model.num_classes, (B,))
    return x, t, y


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


def n_trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


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
    model = build_preset(name, meta=True)
    count = n_trainable(model)
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
    x, t, y = inputs(small())
    assert not small()(x, t, y).any()


# forward


@pytest.mark.parametrize("cls", [DiT, UViT])
@pytest.mark.parametrize("learn_sigma", [True, False])
@pytest.mark.parametrize("patch_size", [1, 2, 4])
def test_forward_shapes(cls, learn_sigma, patch_size):
    model = randomize_(small(cls, learn_sigma=learn_sigma, patch_size=patch_size))
    assert model.out_channels == (8 if learn_sigma else 4)
    x, t, y = inputs(model, B=3)
    out = model(x, t, y)
    assert out.shape == (3, model.out_channels, 8, 8)
    assert torch.isfinite(out).all()


def test_unpatchify_inverts_patch_layout():
    """A token's p*p*C features are (p, p, C)-ordered pixels of its patch, as in DiT."""
    model = small(learn_sigma=False, patch_size=2)
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
    model = randomize_(small(cls))
    model(*inputs(model))
    depth = SMALL["depth"]
    assert calls["layernorm_modulate"] == ["torch"] * (2 * depth + 1)
    assert calls["gated_residual"] == ["torch"] * (2 * depth)


def test_set_backend_reaches_every_op_module():
    model = small(UViT)
    users = [m for m in model.modules() if isinstance(m, (DiTBlock, FinalLayer))]
    assert len(users) == SMALL["depth"] + 1
    model.set_backend(None)
    assert all(m.backend is None for m in users)
    model.set_backend("torch")
    assert all(m.backend == "torch" for m in users)
    with pytest.raises(ValueError):
        model.set_backend("cuda")


def test_automatic_backend_matches_torch():
    model = randomize_(small()).eval()
    x, t, y = inputs(model, B=2)
    ref = model(x, t, y)
    model.set_backend(None)
    torch.testing.assert_close(model(x, t, y), ref, atol=1e-5, rtol=1e-5)


# classifier-free guidance


def test_forward_with_cfg():
    model = randomize_(small()).eval()
    x, t, _ = inputs(model, B=4)
    t = torch.cat([t[:2], t[:2]])
    y = torch.tensor([1, 2, model.num_classes, model.num_classes])  # cond half, then null half
    raw = model(torch.cat([x[:2], x[:2]]), t, y)
    cond, uncond = raw[:2], raw[2:]
    assert not torch.allclose(cond[:, :4], uncond[:, :4])

    out = model.forward_with_cfg(x, t, y, cfg_scale=4.0)
    assert out.shape == raw.shape
    torch.testing.assert_close(out[:2, :4], out[2:, :4])
    torch.testing.assert_close(out[:2, :4], uncond[:, :4] + 4.0 * (cond[:, :4] - uncond[:, :4]))
    torch.testing.assert_close(out[:, 4:], raw[:, 4:])  # learned sigma passes through unguided

    # cfg_scale=1 is the conditional prediction
    out1 = model.forward_with_cfg(x, t, y, cfg_scale=1.0)
    torch.testing.assert_close(out1[:2, :4], cond[:, :4])
    torch.testing.assert_close(out1[2:, :4], cond[:, :4])

    # DiT's quirk: only the first three channels guided
    out3 = model.forward_with_cfg(x, t, y, cfg_scale=4.0, guided_channels=3)
    torch.testing.assert_close(out3[:, :3], out[:, :3])
    torch.testing.assert_close(out3[:, 3:], raw[:, 3:])
    assert not torch.allclose(out3[:2, 3], out3[2:, 3])


# training


@pytest.mark.parametrize("cls", [DiT, UViT])
def test_training_lowers_loss(cls):
    model = small(cls).train()
    x, t, y = inputs(model, B=8)
    target = torch.randn(8, model.out_channels, 8, 8)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.mse_loss(model(x, t, y), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    assert model.pos_embed.grad is None  # frozen, as in DiT
    torch.testing.assert_close(model.pos_embed.data[0], sincos_2d(64, 4, 4))


@pytest.mark.parametrize("cls", [DiT, UViT])
def test_gradient_checkpointing_same_gradients(cls):
    model = randomize_(small(cls, depth=4, class_dropout_prob=0.0)).train()
    x, t, y = inputs(model)
    target = torch.randn(4, model.out_channels, 8, 8)
    block_calls = []
    for block in model.blocks:
        # forward hooks do not fire in checkpoint's recomputation, so count forward() itself
        block.forward = lambda *a, _f=block.forward: block_calls.append(1) or _f(*a)

    def grads(checkpointing):
        model.set_grad_checkpointing(checkpointing)
        model.zero_grad()
        block_calls.clear()
        torch.nn.functional.mse_loss(model(x, t, y), target).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, len(block_calls)

    ref, calls_plain = grads(False)
    got, calls_ckpt = grads(True)
    assert calls_plain == 4 and calls_ckpt == 8  # each block recomputed once in the backward
    assert ref.keys() == got.keys()
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], atol=1e-6, rtol=1e-5, msg=n)
    assert any(g.abs().sum() > 0 for n, g in ref.items() if "adaLN" in n)


# mixed precision


@pytest.mark.parametrize("cls", [DiT, UViT])
def test_bf16_autocast_forward(cls):
    model = randomize_(small(cls)).eval()
    x, t, y = inputs(model)
    ref = model(x, t, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, y)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert (out.float() - ref).norm() / ref.norm() < 0.05


def test_bf16_weights_forward():
    model = randomize_(small()).eval().to(torch.bfloat16)
    x, t, y = inputs(model)
    out = model(x.bfloat16(), t, y)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


# input checks


@pytest.mark.parametrize("H,W", [(16, 16), (4, 4), (8, 6)])
def test_wrong_input_size_raises(H, W):
    model = small()
    with pytest.raises(ValueError, match="built for 8x8 latents.*pos_embed is fixed"):
        model(torch.randn(2, 4, H, W), torch.zeros(2), torch.zeros(2, dtype=torch.long))


def test_input_size_must_divide_by_patch():
    with pytest.raises(ValueError, match="divisible"):
        DiT(input_size=10, patch_size=4, hidden_size=64, depth=1, num_heads=4)


def test_bad_labels_raise():
    model = small()
    x, t, _ = inputs(model, B=2)
    with pytest.raises(TypeError):
        model(x, t, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError):
        model(x, t, torch.tensor([1, model.num_classes + 1]))
    with pytest.raises(ValueError):
        model(x, t, torch.tensor([-1, 0]))
    model(x, t, torch.tensor([0, model.num_classes]))  # the null class is a valid label
    no_null = small(class_dropout_prob=0.0)
    assert no_null.y_embedder.embedding_table.num_embeddings == no_null.num_classes
    with pytest.raises(ValueError):
        no_null(x, t, torch.tensor([0, no_null.num_classes]))


def test_bad_shapes_raise():
    model = small()
    x, t, y = inputs(model, B=2)
    with pytest.raises(ValueError):
        model(torch.randn(2, 3, 8, 8), t, y)
    with pytest.raises(ValueError):
        model(x, t[:1], y)


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
    model = randomize_(small(UViT, depth=depth)).eval()
    x, t, y = inputs(model, B=2)
    model(x, t, y).square().sum().backward()
    for block in model.blocks:
        if block.skip_linear is not None:
            assert block.skip_linear.weight.grad[:, 64:].abs().sum() > 0  # the skip half


def test_uvit_s2_parameter_count():
    dit, uvit = build_preset("DiT-S/2", meta=True), build_preset("UViT-S/2", meta=True)
    assert n_trainable(uvit) - n_trainable(dit) == 5 * (2 * 384 * 384 + 384)
    # every other key is DiT's, so UViT loads a DiT checkpoint with strict=False
    extra = set(uvit.state_dict()) - set(dit.state_dict())
    assert extra == {f"blocks.{i}.skip_linear.{w}" for i in range(7, 12) for w in ("weight", "bias")}


# presets


def test_presets():
    sizes = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
    expected = {f"{m}-{s}/{p}" for m in ("DiT", "UViT") for s in sizes for p in (2, 4, 8)}
    assert set(DIT_PRESETS) == expected
    for name in expected:
        model = build_preset(name, meta=True)
        arch, rest = name.split("-")
        size, patch = rest.split("/")
        assert type(model).__name__ == arch
        depth, hidden, heads = sizes[size]
        assert (len(model.blocks), model.hidden_size, model.blocks[0].attn.num_heads) == (depth, hidden, heads)
        assert (model.patch_size, model.input_size, model.num_classes) == (int(patch), 32, 1000)
        assert model.out_channels == 8 and model.learn_sigma
    small_s = build_preset("DiT-S/2", meta=True, input_size=8, num_classes=101)
    assert small_s.pos_embed.shape == (1, 16, 384) and small_s.y_embedder.embedding_table.num_embeddings == 102
