"""DiT weights in both official formats: the original DiT state dict (our own keys) and diffusers'
DiTTransformer2DModel, converted both ways on small random models and checked by their outputs."""
import pytest
import torch

from families import DIT_TINY
from helpers import model_inputs, randomize_
from xswin_fast import DiT, UViT
from xswin_fast.compat import ensure_torchvision_importable
from xswin_fast.dit_formats import dit_from_diffusers, dit_from_official, dit_to_diffusers

ensure_torchvision_importable()
from diffusers import DiTTransformer2DModel  # noqa: E402

# fp32 rounding only: diffusers projects q, k, v with three GEMMs where DiT has one fused qkv GEMM
ATOL = 1e-5


def random_diffusers_dit(norm_eps: float = 1e-5) -> DiTTransformer2DModel:
    """A small DiTTransformer2DModel with random weights; its blocks share one copy of the
    timestep/label embedders, as every converted DiT checkpoint does."""
    model = DiTTransformer2DModel(
        num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=3,
        sample_size=8, patch_size=2, num_embeds_ada_norm=10, norm_eps=norm_eps,
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    shared = model.transformer_blocks[0].norm1.emb.state_dict()
    for block in model.transformer_blocks[1:]:
        block.norm1.emb.load_state_dict(shared)
    return model


def outputs(model, inputs):
    with torch.no_grad():
        if isinstance(model, DiTTransformer2DModel):
            x, t, y = inputs
            return model(x, timestep=t, class_labels=y).sample
        return model.set_backend("torch")(*inputs)


def test_diffusers_to_ours_and_back():
    theirs = random_diffusers_dit()
    ours = dit_from_diffusers(theirs).eval()
    assert (ours.hidden_size, ours.depth, ours.num_heads, ours.out_channels) == (64, 3, 4, 8)
    x, t, y = model_inputs(ours, B=3)
    y[0] = ours.num_classes  # the null class too
    expected = outputs(theirs, (x, t, y))
    torch.testing.assert_close(outputs(ours, (x, t, y)), expected, atol=ATOL, rtol=0)

    back = dit_to_diffusers(ours)
    assert back.state_dict().keys() == theirs.state_dict().keys()
    assert all(torch.equal(back.state_dict()[k], v) for k, v in theirs.state_dict().items())
    assert torch.equal(outputs(back.eval(), (x, t, y)), expected)


@pytest.mark.parametrize("norm_eps", [1e-5, 1e-6])
def test_ours_to_diffusers_and_back(norm_eps):
    ours = randomize_(DiT(**DIT_TINY, timestep_freq_shift=1, mlp_norm_eps=norm_eps), std=0.1).eval()
    theirs = dit_to_diffusers(ours).eval()
    assert theirs.config.norm_eps == norm_eps
    inputs = model_inputs(ours, B=3)
    expected = outputs(ours, inputs)
    torch.testing.assert_close(outputs(theirs, inputs), expected, atol=ATOL, rtol=0)

    back = dit_from_diffusers(theirs)
    assert all(torch.equal(back.state_dict()[k], v) for k, v in ours.state_dict().items() if k != "pos_embed")
    torch.testing.assert_close(back.pos_embed, ours.pos_embed, atol=1e-6, rtol=0)


def test_original_arithmetic_converts_with_a_warning_and_differs():
    ours = randomize_(DiT(**DIT_TINY), std=0.1).eval()
    with pytest.warns(UserWarning, match="timestep frequencies"):
        theirs = dit_to_diffusers(ours).eval()
    inputs = model_inputs(ours, B=3)
    err = (outputs(theirs, inputs) - outputs(ours, inputs)).abs().max()
    assert err > ATOL


def test_what_cannot_convert_is_a_clear_error():
    with pytest.raises(TypeError, match="must be a DiT"):
        dit_to_diffusers(UViT(**DIT_TINY))
    with pytest.raises(ValueError, match="class_dropout_prob"):
        dit_to_diffusers(DiT(**DIT_TINY, class_dropout_prob=0.0))
    theirs = random_diffusers_dit()
    with torch.no_grad():
        theirs.transformer_blocks[2].norm1.emb.class_embedder.embedding_table.weight.add_(1)
    with pytest.raises(ValueError, match="copies of class_embedder"):
        dit_from_diffusers(theirs)


def test_official_checkpoint_loads_from_a_file_a_state_dict_or_a_training_checkpoint(tmp_path):
    model = randomize_(DiT(**DIT_TINY)).eval()
    sd = model.state_dict()
    torch.save(sd, tmp_path / "DiT-tiny.pt")
    inputs = model_inputs(model)
    for source in (str(tmp_path / "DiT-tiny.pt"), sd, {"model": {}, "ema": sd, "opt": {}}):
        loaded = dit_from_official(source, num_heads=4).eval()
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in sd.items())
        assert (loaded.input_size, loaded.patch_size, loaded.num_classes, loaded.learn_sigma) == (8, 2, 10, True)
        assert torch.equal(outputs(loaded, inputs), outputs(model, inputs))
    with pytest.raises(ValueError, match="num_heads"):
        dit_from_official(sd)


def test_official_preset_widths_need_no_head_count():
    with torch.device("meta"):
        sd = DiT(depth=2, hidden_size=384, num_heads=6, patch_size=4).state_dict()
    loaded = dit_from_official({k: torch.zeros(v.shape) for k, v in sd.items()})
    assert (loaded.hidden_size, loaded.num_heads, loaded.depth, loaded.patch_size, loaded.input_size) == (384, 6, 2, 4, 32)
