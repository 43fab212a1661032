"""XSwin / USwin: presets, shapes, sizes, training, CFG, autocast, checkpointing, bad inputs."""
import copy

import pytest
import torch

from xswin_fast import USwin, XSwin, create_model, list_models
from xswin_fast.flops import count_parameters
from xswin_fast.layers.attention import WindowCrossAttention, effective_window
from xswin_fast.layers.patching import PatchExpanding, PatchMerging
from xswin_fast.models.xswin import XSWIN_PRESETS

TINY = dict(input_size=8, patch_size=1, embed_dim=32, depths=(1, 2), num_heads=(2, 4), window_size=2,
            bottleneck_depth=1, num_classes=10)


def tiny(cls=XSwin, **kw):
    return cls(**{**TINY, **kw}).set_backend("torch")


def batch(model, B=2, H=8, W=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, model.in_channels, H, W, generator=g)
    t = torch.randint(0, 1000, (B,), generator=g)
    y = torch.randint(0, model.num_classes, (B,), generator=g)
    return x, t, y


# the original research code's trainable parameter counts (measured; shared/reference/original_code.md)
@pytest.mark.parametrize("name, expected", [("XSwin-paper", 35_033_230), ("USwin-paper", 33_847_822)])
def test_paper_presets_reproduce_original_parameter_counts(name, expected):
    model = create_model(name)
    assert count_parameters(model) == expected
    assert abs(count_parameters(model) / {"XSwin-paper": 35.04e6, "USwin-paper": 33.85e6}[name] - 1) < 0.01


@pytest.mark.parametrize("size", ["S", "B", "L", "XL"])
def test_scaled_presets_match_dit_parameters_within_ten_percent(size):
    with torch.device("meta"):
        ours = count_parameters(create_model(f"XSwin-{size}/2"))
        uswin = count_parameters(create_model(f"USwin-{size}/2"))
        dit = count_parameters(create_model(f"DiT-{size}/2"))
    assert abs(ours / dit - 1) <= 0.10, (ours, dit)
    assert abs(uswin / dit - 1) <= 0.10, (uswin, dit)


def test_xswin_s2_needs_no_more_flops_than_dit_s2_at_256px():
    from xswin_fast.flops import forward_flops

    with torch.device("meta"):
        ours = forward_flops(create_model("XSwin-S/2"), 32)
        dit = forward_flops(create_model("DiT-S/2"), 32)
    assert ours <= dit, (ours / 1e9, dit / 1e9)


def test_registry_lists_every_family():
    names = list_models()
    for n in ["XSwin-paper", "USwin-paper", "XSwin-S/2", "USwin-XL/2", "DiT-S/2", "UViT-S/2"]:
        assert n in names
    with pytest.raises(ValueError, match="unknown model"):
        create_model("XSwin-Z/3")


@pytest.mark.parametrize("cls", [XSwin, USwin])
@pytest.mark.parametrize("learn_sigma", [True, False])
def test_output_shape(cls, learn_sigma):
    model = tiny(cls, learn_sigma=learn_sigma)
    x, t, y = batch(model)
    out = model(x, t, y)
    assert out.shape == (2, 8 if learn_sigma else 4, 8, 8)
    assert torch.isfinite(out).all()


def test_uswin_is_xswin_without_cross_attention():
    x, u = tiny(XSwin), tiny(USwin)
    assert any(isinstance(m, WindowCrossAttention) for m in x.modules())
    assert not any(isinstance(m, WindowCrossAttention) for m in u.modules())
    extra = sum(count_parameters(m) for m in x.modules() if isinstance(m, WindowCrossAttention))
    assert count_parameters(x) - count_parameters(u) == extra


@pytest.mark.parametrize("H, W, patch", [(9, 7, 1), (5, 12, 1), (10, 6, 2), (3, 3, 1), (1, 4, 1)])
def test_odd_and_non_square_sizes(H, W, patch):
    model = tiny(patch_size=patch).eval()
    x, t, y = batch(model, H=H, W=W)
    out = model(x, t, y)
    assert out.shape == (2, 8, H, W)
    assert torch.isfinite(out).all()


def test_runs_at_sizes_other_than_input_size():
    """The bottleneck's position embedding is computed for the actual size (DESIGN.md §4)."""
    model = tiny(input_size=8).eval()
    for H, W in [(8, 8), (16, 16), (12, 8)]:
        assert model(*batch(model, H=H, W=W)).shape == (2, 8, H, W)


def test_size_not_divisible_by_patch_is_an_error():
    model = tiny(patch_size=2)
    with pytest.raises(ValueError, match="divisible by patch_size"):
        model(*batch(model, H=7, W=8))


@pytest.mark.parametrize("kwargs, match", [
    (dict(window_size=17), "window_size"),
    (dict(window_size=0), "window_size"),
    (dict(num_heads=(3, 4)), "num_heads"),
    (dict(num_heads=(2,)), "num_heads"),
    (dict(depths=()), "depths"),
    (dict(bottleneck_heads=5), "bottleneck_heads"),
])
def test_bad_configuration_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        XSwin(**{**TINY, **kwargs})


def test_bad_inputs_raise():
    model = tiny()
    x, t, y = batch(model)
    with pytest.raises(ValueError, match="x must have shape"):
        model(x[0], t, y)
    with pytest.raises(ValueError, match="x must have shape"):
        model(x[:, :3], t, y)
    with pytest.raises(TypeError, match="x must be a floating-point"):
        model(x.long(), t, y)
    with pytest.raises(ValueError, match="t must be"):
        model(x, t[:1], y)
    with pytest.raises(TypeError, match="y must be an integer"):
        model(x, t, y.float())
    with pytest.raises(ValueError, match="labels in"):
        model(x, t, torch.tensor([0, 11]))
    with pytest.raises(ValueError, match="backend"):
        model.set_backend("cuda")


def test_null_label_is_num_classes():
    model = tiny().eval()
    x, t, _ = batch(model)
    out = model(x, t, torch.tensor([10, 10]))  # the null class is accepted
    assert out.shape[0] == 2
    assert model.y_embedder.embedding_table.num_embeddings == 11


def test_training_step_lowers_loss_on_fixed_batch():
    torch.manual_seed(0)
    model = tiny(stochastic_depth_prob=0.0, class_dropout_prob=0.0)
    x, t, y = batch(model, B=4)
    target = torch.randn(4, 8, 8, 8)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.mse_loss(model(x, t, y), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


def test_modulators_start_as_identity_and_receive_gradients():
    model = tiny()
    x, t, y = batch(model)
    model(x, t, y).square().mean().backward()
    mods = [m for m in model.modules() if m.__class__.__name__ == "Modulator"]
    assert all(m.linear.weight.abs().sum() == 0 for m in mods)
    assert sum(m.linear.weight.grad.abs().sum() > 0 for m in mods) > len(mods) // 2


def test_forward_with_cfg():
    model = tiny().eval()
    x, t, y = batch(model, B=2)
    xx = torch.cat([x[:1], x[:1]])
    tt = torch.cat([t[:1], t[:1]])
    yy = torch.tensor([3, model.num_classes])
    out = model.forward_with_cfg(xx, tt, yy, cfg_scale=4.0)
    assert out.shape == (2, 8, 8, 8)
    assert torch.equal(out[0], out[1])
    cond_uncond = model(xx, tt, yy)
    # cfg_scale 1 returns the conditional prediction in every eps channel; sigma channels pass through
    one = model.forward_with_cfg(xx, tt, yy, cfg_scale=1.0)
    torch.testing.assert_close(one[0, :4], cond_uncond[0, :4])
    torch.testing.assert_close(one[:, 4:], cond_uncond[:, 4:])
    # all eps channels are guided by default; DiT's quirk guided only 3
    expected = cond_uncond[1, :4] + 4.0 * (cond_uncond[0, :4] - cond_uncond[1, :4])
    torch.testing.assert_close(out[0, :4], expected)
    dit_quirk = model.forward_with_cfg(xx, tt, yy, cfg_scale=4.0, guided_channels=3)
    torch.testing.assert_close(dit_quirk[0, 3], cond_uncond[0, 3])
    with pytest.raises(ValueError, match="even batch"):
        model.forward_with_cfg(x[:1], t[:1], y[:1], 2.0)


def test_bf16_autocast():
    model = tiny().eval()
    x, t, y = batch(model)
    ref = model(x, t, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, y)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=0.15, rtol=0.1)


def test_gradient_checkpointing_gives_same_gradients():
    model = tiny()
    x, t, y = batch(model)
    other = copy.deepcopy(model).set_grad_checkpointing(True)
    grads = []
    for m in (model, other):
        torch.manual_seed(123)  # same drop-path and label-dropout draws
        m(x, t, y).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-5, atol=1e-7, msg=n)


def test_cross_attention_windows_are_aligned_with_the_swin_grid():
    """A change in one 2x2 window of the skip only changes the outputs of that window (no offset)."""
    torch.manual_seed(0)
    layer = WindowCrossAttention(dim=8, num_heads=2, window_size=(2, 2), cond_dim=4).eval()
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.5)
    x, skip, cond = torch.randn(1, 4, 4, 8), torch.randn(1, 4, 4, 8), torch.randn(1, 4)
    base = layer(x, skip, cond)
    skip2 = skip.clone()
    skip2[:, 2, 3] += 5.0  # window (1, 1)
    changed = (layer(x, skip2, cond) - base).abs().amax(-1) > 1e-6
    expected = torch.zeros(1, 4, 4, dtype=torch.bool)
    expected[:, 2:4, 2:4] = True
    assert torch.equal(changed, expected)


def test_cross_attention_masks_padded_keys():
    """On a 3x3 map with 2x2 windows the bottom-right window holds one real token: it attends only
    to itself, so its output is independent of every other token."""
    torch.manual_seed(0)
    layer = WindowCrossAttention(dim=8, num_heads=2, window_size=(2, 2), cond_dim=4).eval()
    x, skip, cond = torch.randn(1, 3, 3, 8), torch.randn(1, 3, 3, 8), torch.randn(1, 4)
    base = layer(x, skip, cond)
    skip2 = skip.clone()
    skip2[:, :2, :2] += 3.0
    torch.testing.assert_close(layer(x, skip2, cond)[:, 2, 2], base[:, 2, 2])


def test_effective_window_clamps_and_drops_shift():
    assert effective_window(8, 8, (8, 8), (4, 4)) == ((8, 8), (0, 0))
    assert effective_window(16, 5, (8, 8), (4, 4)) == ((8, 5), (4, 0))
    assert effective_window(3, 9, (2, 2), (1, 1)) == ((2, 2), (1, 1))


def test_merging_and_expanding_shapes():
    cond = torch.zeros(2, 4)
    merge, expand = PatchMerging(6, 4), PatchExpanding(12, 4)
    x = torch.randn(2, 5, 7, 6)
    m = merge(x, cond)
    assert m.shape == (2, 3, 4, 12)
    assert expand(m, cond, target=(5, 7)).shape == (2, 5, 7, 6)


def test_every_preset_builds():
    for name in XSWIN_PRESETS:
        with torch.device("meta"):
            model = create_model(name)
        assert model.out_channels == 2 * model.in_channels


def test_counting_flops_on_meta_does_not_poison_real_runs():
    """Cached masks / bias tables built under a meta default device must not leak into real runs."""
    from xswin_fast.flops import forward_flops

    with torch.device("meta"):
        forward_flops(tiny(), 8)
    model = tiny().eval()
    assert torch.isfinite(model(*batch(model))).all()


def test_checkpoints_with_the_old_vit_norm_names_load():
    """The bottleneck's ViT blocks named their norms ln_1/ln_2; a load pre-hook maps those keys."""
    model = tiny()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    new = model.state_dict()
    old = {k.replace(".norm1.", ".ln_1.").replace(".norm2.", ".ln_2.") if k.startswith("bottleneck.") else k: v
           for k, v in new.items()}
    assert sum(".ln_1." in k or ".ln_2." in k for k in old) == 4  # weight and bias of both norms
    fresh = tiny()
    fresh.load_state_dict(old, strict=True)
    assert fresh.state_dict().keys() == new.keys()
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, new[k]), k
