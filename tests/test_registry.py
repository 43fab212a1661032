"""The registry and its families: every family it builds has a spec (families.py), every preset
builds as itself and as train.py builds it for the digits, and a shrunk preset of every family
trains with train.py, samples with sample.py and exports a model folder that loads."""
import inspect

import pytest
import torch

import xswin_fast
from families import FAMILIES, SPECS, spec
from helpers import meta_preset, train_args
from xswin_fast import create_model, list_models
from xswin_fast.models.registry import PRESETS

family = pytest.mark.parametrize("cls", FAMILIES, ids=lambda c: c.__name__)


def test_every_registered_family_has_a_spec():
    missing = [cls.__name__ for cls in FAMILIES if cls not in SPECS]
    assert not missing, f"no FamilySpec for {', '.join(missing)}: add one to SPECS in tests/families.py"
    unregistered = [cls.__name__ for cls in SPECS if cls not in FAMILIES]
    assert not unregistered, f"SPECS holds {', '.join(unregistered)}, which no preset of the registry builds"


def test_registry_lists_every_family():
    names = list_models()
    for n in ["XSwin-paper", "USwin-paper", "XSwin-S/2", "USwin-XL/2", "DiT-S/2", "UViT-S/2"]:
        assert n in names
    with pytest.raises(ValueError, match="unknown model"):
        create_model("XSwin-Z/3")


@pytest.mark.parametrize("name", list_models())
def test_every_preset_builds_as_itself_and_for_the_digits_job(name):
    """train.py overrides input_size, in_channels and num_classes: every preset takes any size."""
    cls, kwargs = PRESETS[name]
    model = meta_preset(name)
    with torch.device("meta"):
        digits = create_model(name, input_size=8, in_channels=1, num_classes=10)
    assert type(model) is type(digits) is cls
    assert model.learn_sigma == kwargs.get("learn_sigma", inspect.signature(cls).parameters["learn_sigma"].default)
    assert model.out_channels == model.in_channels * (2 if model.learn_sigma else 1)
    assert (digits.config.input_size, digits.in_channels, digits.num_classes) == (8, 1, 10)
    assert digits.out_channels == (2 if digits.learn_sigma else 1)
    if hasattr(digits, "grid_size"):  # the token grid follows input_size
        assert digits.grid_size == 8 // digits.patch_size


@family
def test_train_and_sample_clis_run_a_preset_of_every_family(cls, tmp_path):
    from xswin_fast.cli import sample, train

    s = spec(cls)
    run = tmp_path / "run"
    assert train.main(train_args(run, "--model", s.cli_preset, "--model-kwargs", s.cli_model_kwargs)) == 0
    exported = xswin_fast.from_pretrained(str(run / "model" / "transformer"))
    assert type(exported) is cls and exported.in_channels == 1 and exported.num_classes == 10
    rc = sample.main(["--ckpt", str(run / "model"), "--num-samples", "2", "--steps", "2",
                      "--backend", "torch", "--threads", "1", "--out", str(tmp_path / "samples")])
    assert rc == 0 and len(list((tmp_path / "samples" / "images").glob("*.png"))) == 2
