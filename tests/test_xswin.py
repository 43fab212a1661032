"""XSwin / USwin: presets, parameter counts, sizes, configuration errors, the modulators, the skip
cross-attention, patch merging and expanding, old checkpoints. The contract every backbone keeps
is in test_backbone_contract.py."""
import pytest
import torch

from families import tiny
from helpers import meta_preset, model_inputs
from xswin_fast import USwin, XSwin, create_model
from xswin_fast.flops import count_parameters
from xswin_fast.layers.attention import WindowCrossAttention, effective_window
from xswin_fast.layers.patching import PatchExpanding, PatchMerging


# the original research code's trainable parameter counts (measured by instantiating it)
@pytest.mark.parametrize("name, expected", [("XSwin-paper", 35_033_230), ("USwin-paper", 33_847_822)])
def test_paper_presets_reproduce_original_parameter_counts(name, expected):
    model = create_model(name)
    assert count_parameters(model) == expected
    assert abs(count_parameters(model) / {"XSwin-paper": 35.04e6, "USwin-paper": 33.85e6}[name] - 1) < 0.01


@pytest.mark.parametrize("size", ["S", "B", "L", "XL"])
def test_scaled_presets_match_dit_parameters_within_ten_percent(size):
    ours = count_parameters(meta_preset(f"XSwin-{size}/2"))
    uswin = count_parameters(meta_preset(f"USwin-{size}/2"))
    dit = count_parameters(meta_preset(f"DiT-{size}/2"))
    assert abs(ours / dit - 1) <= 0.10, (ours, dit)
    assert abs(uswin / dit - 1) <= 0.10, (uswin, dit)


def test_xswin_s2_needs_no_more_flops_than_dit_s2_at_256px():
    from xswin_fast.flops import forward_flops

    with torch.device("meta"):
        ours = forward_flops(create_model("XSwin-S/2"), 32)
        dit = forward_flops(create_model("DiT-S/2"), 32)
    assert ours <= dit, (ours / 1e9, dit / 1e9)


def test_uswin_is_xswin_without_cross_attention():
    x, u = tiny(XSwin), tiny(USwin)
    assert any(isinstance(m, WindowCrossAttention) for m in x.modules())
    assert not any(isinstance(m, WindowCrossAttention) for m in u.modules())
    extra = sum(count_parameters(m) for m in x.modules() if isinstance(m, WindowCrossAttention))
    assert count_parameters(x) - count_parameters(u) == extra


@pytest.mark.parametrize("H, W, patch", [(9, 7, 1), (5, 12, 1), (10, 6, 2), (3, 3, 1), (1, 4, 1)])
def test_odd_and_non_square_sizes(H, W, patch):
    model = tiny(XSwin, patch_size=patch).eval()
    x, t, y = model_inputs(model, H=H, W=W)
    out = model(x, t, y)
    assert out.shape == (2, 8, H, W)
    assert torch.isfinite(out).all()


def test_runs_at_sizes_other_than_input_size():
    """The bottleneck's position embedding is computed for the actual size (docs/design.md §4)."""
    model = tiny(XSwin, input_size=8).eval()
    for H, W in [(8, 8), (16, 16), (12, 8)]:
        assert model(*model_inputs(model, H=H, W=W)).shape == (2, 8, H, W)


def test_size_not_divisible_by_patch_is_an_error():
    model = tiny(XSwin, patch_size=2)
    with pytest.raises(ValueError, match="divisible by patch_size"):
        model(*model_inputs(model, H=7, W=8))


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
        tiny(XSwin, **kwargs)


def test_modulators_start_as_identity_and_receive_gradients():
    model = tiny(XSwin)
    x, t, y = model_inputs(model)
    model(x, t, y).square().mean().backward()
    mods = [m for m in model.modules() if m.__class__.__name__ == "Modulator"]
    assert all(m.linear.weight.abs().sum() == 0 for m in mods)
    assert sum(m.linear.weight.grad.abs().sum() > 0 for m in mods) > len(mods) // 2


def test_cross_attention_windows_are_aligned_with_the_swin_grid():
    """A change in one 2x2 window of the skip only changes the outputs of that window (no offset)."""
    torch.manual_seed(0)
    layer = WindowCrossAttention(dim=8, num_heads=2, window_size=(2, 2), c_dim=4).eval()
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.5)
    x, skip, silu_c = torch.randn(1, 4, 4, 8), torch.randn(1, 4, 4, 8), torch.randn(1, 4)
    base = layer(x, skip, silu_c)
    skip2 = skip.clone()
    skip2[:, 2, 3] += 5.0  # window (1, 1)
    changed = (layer(x, skip2, silu_c) - base).abs().amax(-1) > 1e-6
    expected = torch.zeros(1, 4, 4, dtype=torch.bool)
    expected[:, 2:4, 2:4] = True
    assert torch.equal(changed, expected)


def test_cross_attention_masks_padded_keys():
    """On a 3x3 map with 2x2 windows the bottom-right window holds one real token: it attends only
    to itself, so its output is independent of every other token."""
    torch.manual_seed(0)
    layer = WindowCrossAttention(dim=8, num_heads=2, window_size=(2, 2), c_dim=4).eval()
    x, skip, silu_c = torch.randn(1, 3, 3, 8), torch.randn(1, 3, 3, 8), torch.randn(1, 4)
    base = layer(x, skip, silu_c)
    skip2 = skip.clone()
    skip2[:, :2, :2] += 3.0
    torch.testing.assert_close(layer(x, skip2, silu_c)[:, 2, 2], base[:, 2, 2])


def test_effective_window_clamps_and_drops_shift():
    assert effective_window(8, 8, (8, 8), (4, 4)) == ((8, 8), (0, 0))
    assert effective_window(16, 5, (8, 8), (4, 4)) == ((8, 5), (4, 0))
    assert effective_window(3, 9, (2, 2), (1, 1)) == ((2, 2), (1, 1))


def test_merging_and_expanding_shapes():
    silu_c = torch.zeros(2, 4)
    merge, expand = PatchMerging(6, 4), PatchExpanding(12, 4)
    x = torch.randn(2, 5, 7, 6)
    m = merge(x, silu_c)
    assert m.shape == (2, 3, 4, 12)
    assert expand(m, silu_c, target=(5, 7)).shape == (2, 5, 7, 6)


def test_counting_flops_on_meta_does_not_poison_real_runs():
    """Cached masks / bias tables built under a meta default device must not leak into real runs."""
    from xswin_fast.flops import forward_flops

    with torch.device("meta"):
        forward_flops(tiny(XSwin), 8)
    model = tiny(XSwin).eval()
    assert torch.isfinite(model(*model_inputs(model))).all()


def test_checkpoints_with_the_old_vit_norm_names_load():
    """The bottleneck's ViT blocks named their norms ln_1/ln_2; a load pre-hook maps those keys."""
    model = tiny(XSwin)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    new = model.state_dict()
    old = {k.replace(".norm1.", ".ln_1.").replace(".norm2.", ".ln_2.") if k.startswith("bottleneck.") else k: v
           for k, v in new.items()}
    assert sum(".ln_1." in k or ".ln_2." in k for k in old) == 4  # weight and bias of both norms
    fresh = tiny(XSwin)
    fresh.load_state_dict(old, strict=True)
    assert fresh.state_dict().keys() == new.keys()
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, new[k]), k
