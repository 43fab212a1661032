"""diffusers' model conventions on every family: ``return_dict`` (diffusers' output, its 1-tuple, the
plain tensor by default), ``_no_split_modules`` so that ``from_pretrained(..., device_map=...)``
loads through accelerate, and DiTPipelineTransformer passing gradient checkpointing and
``_repeated_blocks`` through to its backbone. Tiny models, CPU only."""
import pytest
import torch
from diffusers.models.modeling_outputs import Transformer2DModelOutput

import xswin_fast
from families import FAMILIES, tiny
from helpers import counting_checkpoint, forward_backward, model_inputs, randomize_
from xswin_fast import DiT
from xswin_fast.pipelines import DiTPipelineTransformer

family = pytest.mark.parametrize("cls", FAMILIES, ids=lambda c: c.__name__)


@family
def test_return_dict_gives_diffusers_output_its_tuple_or_the_tensor(cls):
    model = randomize_(tiny(cls)).eval()
    inputs = model_inputs(model)
    plain = model(*inputs)
    assert type(plain) is torch.Tensor  # the DiT interface: model(x, t, y) is the tensor
    as_dict = model(*inputs, return_dict=True)
    assert isinstance(as_dict, Transformer2DModelOutput) and torch.equal(as_dict.sample, plain)
    as_tuple = model(*inputs, return_dict=False)
    assert type(as_tuple) is tuple and len(as_tuple) == 1 and torch.equal(as_tuple[0], plain)
    # diffusers' testers compare the two forms element by element
    assert torch.equal(as_dict.to_tuple()[0], as_tuple[0])
    with pytest.raises(TypeError, match="return_dict must be a bool"):
        model(*inputs, return_dict="yes")


@family
def test_every_family_declares_its_unsplittable_modules(cls):
    model = tiny(cls)
    declared = set(cls._no_split_modules)
    present = {type(m).__name__ for m in model.modules()}
    assert set(cls._repeated_blocks) <= declared
    assert declared & present >= set(cls._repeated_blocks)
    assert model._get_no_split_modules("auto")  # raises for a model without _no_split_modules


@family
@pytest.mark.parametrize("device_map", ["cpu", "auto"])
def test_from_pretrained_with_a_device_map_matches_the_model(cls, device_map, tmp_path):
    pytest.importorskip("accelerate")
    model = randomize_(tiny(cls)).eval()
    inputs = model_inputs(model)
    expected = model(*inputs)
    model.save_pretrained(tmp_path)
    loaded = xswin_fast.from_pretrained(str(tmp_path), device_map=device_map).set_backend("torch")
    assert set(loaded.hf_device_map.values()) <= {"cpu", torch.device("cpu")}
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}
    torch.testing.assert_close(loaded(*inputs), expected, rtol=0, atol=0)


def test_adapter_passes_gradient_checkpointing_to_the_backbone():
    model = randomize_(tiny(DiT, class_dropout_prob=0.0))
    adapter = DiTPipelineTransformer.from_backbone(model)
    x, t, y = model_inputs(model)
    out, grads = forward_backward(model, (x, t, y))

    calls = []
    adapter.enable_gradient_checkpointing(counting_checkpoint(calls))
    assert adapter.is_gradient_checkpointing and model.gradient_checkpointing
    out_ckpt, grads_ckpt = forward_backward(model, (x, t, y))
    assert calls and set(calls) == {"DiTBlock"}
    torch.testing.assert_close(out_ckpt, out)
    torch.testing.assert_close(grads_ckpt, grads)
    adapter.disable_gradient_checkpointing()
    assert not model.gradient_checkpointing


def test_adapter_compiles_the_backbones_repeated_blocks():
    model = randomize_(tiny(DiT)).eval()
    adapter = DiTPipelineTransformer.from_backbone(model)
    assert adapter._repeated_blocks == ["DiTBlock"]
    x, t, y = model_inputs(model)
    expected = adapter(x, t, y).sample
    adapter.compile_repeated_blocks(backend="eager", fullgraph=True)
    assert all(b._compiled_call_impl is not None for b in model.blocks)
    torch._dynamo.reset()
    torch.testing.assert_close(adapter(x, t, y).sample, expected)


def test_adapter_loads_with_a_device_map(tmp_path):
    pytest.importorskip("accelerate")
    model = randomize_(tiny(DiT, num_classes=1000)).eval()
    DiTPipelineTransformer.from_backbone(model).save_pretrained(tmp_path)
    loaded = DiTPipelineTransformer.from_pretrained(tmp_path, device_map="auto")
    x, t, y = model_inputs(model)
    torch.testing.assert_close(loaded.backbone.set_backend("torch")(x, t, y), model(x, t, y), rtol=0, atol=0)
