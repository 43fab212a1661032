"""IU-ViT: the Table 5 columns and their stated parameters, the documented readings (DWConv-FFN
order, rearrange-first head, conditioning tokens, UViT's skips), sizes, configuration errors, the
ops it does not use. The contract every backbone keeps is in test_backbone_contract.py, its
presets' builds and CLI runs in test_registry.py."""
import pytest
import torch
import torch.nn.functional as F

import xswin_fast.ops as ops
from families import tiny
from helpers import assert_fits_a_fixed_batch, meta_preset, model_inputs, randomize_
from xswin_fast.flops import count_parameters
from xswin_fast.models.dit import UViT
from xswin_fast.models.iuvit import DWConvMlp, IUViT, IUViTBlock, RearrangeFirstHead

# Table 5's unconditional columns: (size, patch, layers, hidden, heads, stated parameters)
TABLE5 = {
    "CIFAR-10": (32, 2, 13, 512, 8, 45e6),
    "CelebA 64": (64, 4, 13, 512, 8, 45e6),
    "CelebA 128": (128, 8, 17, 1408, 22, 442e6),
    "Church 256": (256, 16, 17, 1536, 24, 527e6),
}
PRESET_COLUMNS = {"IUViT-CIFAR10": "CIFAR-10", "IUViT-CelebA64": "CelebA 64"}


@pytest.mark.parametrize("column", list(TABLE5))
def test_every_table5_column_is_within_five_percent_of_the_papers_count(column):
    """The two presets and the two larger columns (not registered): the same reading reproduces
    all four stated sizes (-0.4% to -0.5%)."""
    size, patch, layers, hidden, heads, stated = TABLE5[column]
    with torch.device("meta"):
        model = IUViT(input_size=size, patch_size=patch, depth=layers, hidden_size=hidden, num_heads=heads)
    n = count_parameters(model)
    assert abs(n / stated - 1) < 0.05, n


@pytest.mark.parametrize("name", list(PRESET_COLUMNS))
def test_presets_are_their_table5_columns(name):
    size, patch, layers, hidden, heads, _ = TABLE5[PRESET_COLUMNS[name]]
    model = meta_preset(name)
    assert (model.input_size, model.patch_size, model.depth, model.hidden_size, model.num_heads) == (
        size, patch, layers, hidden, heads)
    assert model.in_channels == 3 and model.num_classes == 1 and not model.learn_sigma


def test_dwconv_ffn_is_fc1_dwconv_gelu_fc2_on_the_patch_grid():
    """The documented order, against a literal spelling; the two conditioning tokens skip the conv."""
    torch.manual_seed(0)
    mlp = DWConvMlp(8, 16, grid_size=3)
    x = torch.randn(2, 2 + 9, 8)
    h = mlp.fc1(x)
    grid = torch.zeros(2, 16, 3, 3)
    for i in range(3):
        for j in range(3):
            grid[:, :, i, j] = h[:, 2 + 3 * i + j]
    grid = F.conv2d(grid, mlp.dwconv.weight, mlp.dwconv.bias, padding=1, groups=16)
    expected = torch.cat([h[:, :2], grid.flatten(2).transpose(1, 2)], dim=1)
    expected = mlp.fc2(F.gelu(expected))
    torch.testing.assert_close(mlp(x), expected)


def test_dwconv_ffn_mixes_only_the_3x3_neighbourhood():
    torch.manual_seed(0)
    mlp = DWConvMlp(8, 16, grid_size=4)
    x = torch.randn(1, 2 + 16, 8)
    base = mlp(x)
    x2 = x.clone()
    x2[:, 2 + 4 * 1 + 2] += 1.0  # patch (1, 2)
    changed = ((mlp(x2) - base).abs().amax(-1) > 1e-6)[0]
    expected = torch.zeros(2 + 16, dtype=torch.bool)
    for i in range(0, 3):
        for j in range(1, 4):
            expected[2 + 4 * i + j] = True
    assert torch.equal(changed, expected)


def test_head_rearranges_tokens_to_pixels_before_its_conv():
    """Rearrange-first: each token's features become its p x p pixels (feature c*p*p + a*p + b is
    channel c at pixel (a, b) of the patch), then the 3x3 conv; no linear before it."""
    torch.manual_seed(0)
    head = RearrangeFirstHead(hidden_size=32, patch_size=2, out_channels=3)
    assert not any(isinstance(m, torch.nn.Linear) for m in head.modules())
    tokens = torch.randn(2, 9, 32)
    normed = head.norm(tokens)
    image = torch.zeros(2, 8, 6, 6)
    for i in range(3):
        for j in range(3):
            feats = normed[:, 3 * i + j].view(2, 8, 2, 2)
            image[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2] = feats
    torch.testing.assert_close(head(tokens, 3), head.conv(image))
    assert head.conv.in_channels == 32 // 4 and head.conv.kernel_size == (3, 3)


def test_time_and_label_are_tokens_stripped_before_the_head():
    model = randomize_(tiny(IUViT)).eval()
    assert not any(n.startswith("blocks.") and "adaLN" in n for n, _ in model.named_parameters())
    seen = []
    model.final_layer.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    x, t, y = model_inputs(model)
    base = model(x, t, y)
    assert seen == [(2, model.grid_size**2, model.hidden_size)]
    assert not torch.allclose(model(x, t + 100, y), base)
    assert not torch.allclose(model(x, t, (y + 1) % model.num_classes), base)


@pytest.mark.parametrize("depth", [3, 4, 13])
def test_skips_pair_as_in_uvit(depth):
    model = tiny(IUViT, depth=depth)
    uvit = tiny(UViT, depth=depth)
    assert all(isinstance(b, IUViTBlock) for b in model.blocks)
    assert [b.skip_linear is not None for b in model.blocks] == [b.skip_linear is not None for b in uvit.blocks]
    assert sum(b.skip_linear is not None for b in model.blocks) == (depth - 1) // 2


def test_runs_no_xswin_op(monkeypatch):
    """IU-ViT has no adaLN and no window attention: nothing for the kernels (its attention is SDPA)."""
    calls = []
    for name in ("window_attention", "modulate", "layernorm_modulate", "gated_residual", "modulate_layernorm",
                 "residual_layernorm"):
        real = getattr(ops, name)
        monkeypatch.setattr(ops, name, lambda *a, _f=real, _n=name, **k: calls.append(_n) or _f(*a, **k))
    model = randomize_(tiny(IUViT))
    model(*model_inputs(model)).sum().backward()
    assert calls == []
    assert not any(hasattr(m, "backend") for m in model.modules())


def test_unconditional_model_trains():
    model = tiny(IUViT, num_classes=1, class_dropout_prob=0.0, learn_sigma=False).train()
    x, t, _ = model_inputs(model, B=4)
    assert_fits_a_fixed_batch(model, (x, t, torch.zeros(4, dtype=torch.long)), lr=1e-3)


def test_other_sizes_are_a_clear_error():
    """The position embedding is fixed at input_size (as UViT's and DiT's)."""
    model = tiny(IUViT)
    with pytest.raises(ValueError, match="build the model with input_size=12"):
        model(*model_inputs(model, H=12))
    with pytest.raises(ValueError, match="square latents only"):
        model(*model_inputs(model, H=8, W=6))


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(hidden_size=36, num_heads=4, patch_size=4), ValueError, "patch_size"),
    (dict(patch_size=3), ValueError, "divisible by patch_size"),
    (dict(num_heads=5), ValueError, "num_heads"),
    (dict(depth=0), ValueError, "depth"),
    (dict(learn_sigma=1), TypeError, "learn_sigma"),
])
def test_bad_configuration_raises(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        tiny(IUViT, **kwargs)
