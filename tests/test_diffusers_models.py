"""Every backbone family is a diffusers model: save_pretrained writes config.json and safetensors,
from_pretrained (the class's, or the family-agnostic xswin_fast.from_pretrained) restores it bit
for bit; torch_dtype, variant and sharding; diffusers' gradient-checkpointing switches drive
run_block; _repeated_blocks drive compile_repeated_blocks. All local, no hub access."""
import json

import pytest
import torch

import xswin_fast
from families import FAMILIES, tiny
from helpers import counting_checkpoint, forward_backward, model_inputs, randomize_
from xswin_fast import DiT, USwin, create_model
from xswin_fast.models import PRESETS
from xswin_fast.models.base import DiffusionBackbone

family = pytest.mark.parametrize("cls", FAMILIES, ids=lambda c: c.__name__)


def public(config) -> dict:
    """A config's constructor arguments as config.json stores them (tuples become lists)."""
    return json.loads(json.dumps({k: v for k, v in config.items() if not k.startswith("_")}))


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@family
def test_save_pretrained_round_trip_is_bit_exact(cls, tmp_path):
    model = randomize_(tiny(cls, class_dropout_prob=0.2)).eval()
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json", "diffusion_pytorch_model.safetensors", "weights_sha256.json",
    ]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["_class_name"] == cls.__name__ and config["class_dropout_prob"] == 0.2

    inputs = model_inputs(model)
    expected = model(*inputs)
    for loaded in (cls.from_pretrained(tmp_path), xswin_fast.from_pretrained(str(tmp_path))):
        assert type(loaded) is cls and not loaded.training
        assert public(loaded.config) == public(model.config)
        assert_same_weights(loaded, model)
        assert torch.equal(loaded.set_backend("torch")(*inputs), expected)


def test_uswin_keeps_its_plain_skips_through_a_folder(tmp_path):
    model = tiny(USwin)
    assert model.config.cross_attention_skips is False
    model.save_pretrained(tmp_path)
    loaded = xswin_fast.from_pretrained(str(tmp_path))
    assert type(loaded) is USwin and loaded.cross_attention_skips is False
    assert not any("skip_attn" in k for k in loaded.state_dict())


@pytest.mark.parametrize(
    "name",
    ["XSwin-digits", "XSwin-paper", "USwin-S/2", "DiT-S/8", "UViT-S/8", "DiffiT-CIFAR10", "DiffiT-latent-XL/2", "ASCEND-32",
     "IUViT-CIFAR10"],
)
def test_config_of_a_preset_rebuilds_it(name):
    with torch.device("meta"):
        model = create_model(name)
        rebuilt = type(model).from_config(model.config)
    cls, kwargs = PRESETS[name]
    assert type(rebuilt) is cls and public(rebuilt.config) == public(model.config)
    assert public(kwargs).items() <= public(model.config).items()
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert shapes == {k: v.shape for k, v in rebuilt.state_dict().items()}


def test_torch_dtype_variant_and_shards(tmp_path):
    model = randomize_(tiny(DiT))
    model.save_pretrained(tmp_path / "fp16", variant="fp16")
    assert (tmp_path / "fp16" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    half = xswin_fast.from_pretrained(str(tmp_path / "fp16"), variant="fp16", torch_dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    for k, v in model.state_dict().items():
        assert torch.equal(half.state_dict()[k], v.to(torch.bfloat16)), k

    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    shards = sorted((tmp_path / "sharded").glob("diffusion_pytorch_model-*.safetensors"))
    assert len(shards) > 2 and (tmp_path / "sharded" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert_same_weights(xswin_fast.from_pretrained(str(tmp_path / "sharded")), model)


def test_unknown_class_in_config_is_a_clear_error(tmp_path):
    tiny(FAMILIES[0]).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match="UNet2DModel"):
        xswin_fast.from_pretrained(str(tmp_path))


def test_families_added_later_are_diffusers_models_automatically(tmp_path):
    class WideDiT(DiT):
        def __init__(self, width: int = 64, num_classes: int = 3):
            super().__init__(input_size=8, hidden_size=width, depth=1, num_heads=2, num_classes=num_classes)

    assert DiffusionBackbone.families["WideDiT"] is WideDiT
    model = randomize_(WideDiT(width=32))
    model.save_pretrained(tmp_path)
    loaded = xswin_fast.from_pretrained(str(tmp_path))
    assert type(loaded) is WideDiT and loaded.hidden_size == 32 and public(loaded.config) == {"width": 32, "num_classes": 3}
    assert_same_weights(loaded, model)

    with pytest.raises(TypeError, match=r"AnyDiT.__init__ must name every argument"):
        class AnyDiT(DiT):
            def __init__(self, **kwargs):
                super().__init__(**kwargs)


@family
def test_diffusers_checkpointing_switches_drive_run_block(cls):
    model = randomize_(tiny(cls, class_dropout_prob=0.0))
    inputs = model_inputs(model)
    out, grads = forward_backward(model, inputs)

    calls = []
    model.enable_gradient_checkpointing(counting_checkpoint(calls))
    assert model.is_gradient_checkpointing and model.gradient_checkpointing
    out_ckpt, grads_ckpt = forward_backward(model, inputs)
    assert calls and set(calls) <= set(model._repeated_blocks)
    torch.testing.assert_close(out_ckpt, out)
    torch.testing.assert_close(grads_ckpt, grads)

    model.disable_gradient_checkpointing()
    assert not model.is_gradient_checkpointing
    n = len(calls)
    forward_backward(model, inputs)
    assert len(calls) == n

    # the project's own switch is the same flag
    assert model.set_grad_checkpointing(True).is_gradient_checkpointing
    assert not model.set_grad_checkpointing(False).is_gradient_checkpointing


@family
def test_compile_repeated_blocks_compiles_every_block(cls):
    model = randomize_(tiny(cls)).eval()
    inputs = model_inputs(model)
    expected = model(*inputs)
    names = set(model._repeated_blocks)
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    assert {type(m).__name__ for m in blocks} == names
    model.compile_repeated_blocks(backend="eager", fullgraph=True)
    assert all(m._compiled_call_impl is not None for m in blocks)
    torch._dynamo.reset()
    torch.testing.assert_close(model(*inputs), expected)
