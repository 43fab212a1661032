"""XSwin's ``skip_fusion``: the default ("replace") is the original model, parameter for
parameter; "residual" starts as USwin (the skip passes unchanged, the attention branch zero) and
can learn the branch; "sum" adds the branch to the skip; wrong values are refused by name. The
ablation driver and the diagnostics (experiments/skip_ablation.py, skip_diagnostics.py) on tiny data."""
import json

import pytest
import torch

from families import tiny
from helpers import experiment_modules, model_inputs
from xswin_fast import USwin, XSwin, create_model
from xswin_fast.layers.attention import WindowCrossAttention

FP32_ATOL = 1e-6  # float32: the same arithmetic, only the zero branch added


def _branch_inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 4, 4, 8, generator=g), torch.randn(2, 4, 4, 8, generator=g), torch.randn(2, 4, generator=g)


def test_default_is_replace_with_the_same_parameters_and_outputs():
    torch.manual_seed(0)
    default = tiny(XSwin).eval()
    torch.manual_seed(0)
    explicit = tiny(XSwin, skip_fusion="replace").eval()
    torch.manual_seed(0)
    residual = tiny(XSwin, skip_fusion="residual")
    assert default.config.skip_fusion == "replace"
    assert default.state_dict().keys() == explicit.state_dict().keys() == residual.state_dict().keys()
    for k, v in default.state_dict().items():
        assert torch.equal(v, explicit.state_dict()[k]), k
    inputs = model_inputs(default)
    assert torch.equal(default(*inputs), explicit(*inputs))
    # the LayerNorms of the skip branches are the only parameters the option initialises otherwise
    differ = {k for k, v in default.state_dict().items() if not torch.equal(v, residual.state_dict()[k])}
    assert differ == {k for k in default.state_dict() if k.startswith("decoder.") and k.endswith("skip_attn.norm.weight")}


def test_residual_layer_is_the_identity_on_the_skip_at_init_and_sum_adds_the_branch():
    torch.manual_seed(0)
    replace = WindowCrossAttention(8, 2, (2, 2), 4)
    torch.manual_seed(0)
    summed = WindowCrossAttention(8, 2, (2, 2), 4, fusion="sum")
    torch.manual_seed(0)
    residual = WindowCrossAttention(8, 2, (2, 2), 4, fusion="residual")
    residual.init_fusion()
    x, skip, silu_c = _branch_inputs()
    assert torch.equal(residual(x, skip, silu_c), skip)  # LayerNorm scale 0 and bias 0: the branch is exactly 0
    torch.testing.assert_close(summed(x, skip, silu_c), skip + replace(x, skip, silu_c), rtol=0, atol=FP32_ATOL)
    assert not torch.allclose(summed(x, skip, silu_c), skip, atol=1e-2)  # the sum's branch is not zero at init


def test_residual_xswin_at_init_computes_uswin_with_the_shared_weights():
    """Every USwin parameter is an XSwin parameter; XSwin's extra ones are the skip branches,
    which under "residual" add zero at init, so the two models agree given USwin's weights."""
    torch.manual_seed(0)
    xswin = tiny(XSwin, skip_fusion="residual").eval()
    with torch.no_grad():
        for m in xswin.modules():
            if isinstance(m, WindowCrossAttention):
                m.norm.bias.zero_()  # XSwin draws LayerNorm biases ~1e-6: make the branch exactly 0
    uswin = tiny(USwin).eval()
    shared = {k: v for k, v in xswin.state_dict().items() if ".skip_attn." not in k}
    uswin.load_state_dict(shared, strict=True)
    inputs = model_inputs(xswin)
    torch.testing.assert_close(xswin(*inputs), uswin(*inputs), rtol=0, atol=FP32_ATOL)


def test_residual_branch_learns_from_the_first_step():
    """Only the zeroed LayerNorm scale (the gate) gets a gradient at init, and it does get one."""
    torch.manual_seed(0)
    model = tiny(XSwin, skip_fusion="residual").train()
    model(*model_inputs(model)).square().mean().backward()
    for m in model.modules():
        if isinstance(m, WindowCrossAttention):
            assert m.norm.weight.grad.abs().sum() > 0
            assert m.q.weight.grad is None or not m.q.weight.grad.any()


@pytest.mark.parametrize("cls, value", [(XSwin, "gate"), (XSwin, None), (USwin, "residual"), (USwin, "sum")])
def test_bad_skip_fusion_is_refused_by_name(cls, value):
    with pytest.raises(ValueError, match="skip_fusion must be one of replace, sum, residual"):
        tiny(cls, skip_fusion=value)


def test_bad_layer_fusion_is_refused_by_name():
    with pytest.raises(ValueError, match="fusion must be one of replace, sum, residual, got 'concat'"):
        WindowCrossAttention(8, 2, (2, 2), 4, fusion="concat")


def test_residual_survives_a_diffusers_round_trip(tmp_path):
    torch.manual_seed(0)
    model = tiny(XSwin, skip_fusion="residual").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # trained weights: the gate is no longer zero
    model.save_pretrained(tmp_path)
    loaded = XSwin.from_pretrained(tmp_path).set_backend("torch").eval()
    assert loaded.config.skip_fusion == "residual"
    inputs = model_inputs(model)
    assert torch.equal(loaded(*inputs), model(*inputs))


@pytest.fixture(scope="module")
def skip_scripts():
    with experiment_modules("skip_ablation", "skip_diagnostics") as modules:
        yield modules


def test_diagnostics_see_window_means_in_replace_and_the_raw_skip_in_uswin(skip_scripts):
    """At init the cross-attention is near uniform, so the replace branch keeps little of the
    skip's within-window detail; USwin's (and residual's) skip keeps all of it. The diagnostics'
    own recomputation of the attention is checked against the layer inside stage_rows."""
    diagnostics = skip_scripts[1]
    g = torch.Generator().manual_seed(0)
    images, labels = torch.rand(32, 1, 8, 8, generator=g) * 2 - 1, torch.randint(0, 10, (32,), generator=g)
    digits = dict(input_size=8, in_channels=1, num_classes=10)
    rows = {}
    for name, kwargs in (("XSwin-digits", dict(skip_fusion="replace")), ("XSwin-digits", dict(skip_fusion="residual")),
                         ("USwin-digits", {})):
        torch.manual_seed(0)
        model = create_model(name, **digits, **kwargs).set_backend("torch").eval()
        rows[kwargs.get("skip_fusion", "uswin")] = diagnostics.stage_rows(model, images, labels, seed=0)
    finest = [r[-1] for r in (rows["replace"], rows["residual"], rows["uswin"])]
    assert finest[0]["kept"] < 0.5 and abs(finest[0]["self"] - 0.25) < 0.05
    assert finest[1]["kept"] == pytest.approx(1, abs=1e-6) and finest[1]["branch"] < 1e-4
    assert finest[2]["kept"] == pytest.approx(1, abs=1e-6)


def test_skip_ablation_reuses_the_baselines_recipe_and_names_its_variant_cells(skip_scripts, tmp_path):
    from xswin_fast.evaluation.digits_extractor import train_digits_extractor

    ablation = skip_scripts[0]
    base = tmp_path / "base"
    base.mkdir()
    recipe = dict(steps=2, eval_every=2, batch_size=8, lr=1e-3, warmup=0, ema_decay=0.9999, sampler="ddim", sample_steps=2,
                  curve_cfg=1.0, num_samples=10, selection_samples=10, cfg_sweep=[1.0, 2.0], fashion_size=16, fashion_patch=2,
                  objective="eps", lr_schedule="constant", ema_warmup=True, max_grad_norm=1.0, digits_split_seed=0,
                  sweep_reference=10000)
    (base / "recipe.json").write_text(json.dumps(recipe))
    weights = train_digits_extractor(tmp_path / "digits.pt", epochs=1, verbose=False)
    argv = ["--out", str(tmp_path / "out"), "--results", str(tmp_path / "res"), "--baselines", str(base), "--threads", "1",
            "--backend", "torch", "--variants", "residual", "--seeds", "1", "--digits-extractor-weights", str(weights)]
    assert ablation.main(argv) == 0
    cell = json.loads((tmp_path / "res" / "cells" / "digits-XSwin-digits-seed0-residual.json").read_text())
    assert cell["model_kwargs"] == {"skip_fusion": "residual"} and cell["recipe"] == recipe
    assert json.loads((tmp_path / "res" / "recipe.json").read_text()) == recipe
    assert "| residual (XSwin, skip_fusion=residual) | 0 |" in (tmp_path / "res" / "table.md").read_text()
    recipe["lr"] = 2e-3  # the cells here were made with the baselines' old recipe: refused
    (base / "recipe.json").write_text(json.dumps(recipe))
    with pytest.raises(SystemExit, match="holds cells of another recipe"):
        ablation.main([*argv, "--out", str(tmp_path / "out2")])
