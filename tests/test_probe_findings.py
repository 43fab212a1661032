"""What the re-run of the outside probes (tools/probe_inputs.py) found, each refused in one line
naming the argument or file at fault: a negative --split-seed, train.py --backend triton on a CPU,
an empty guidance interval, evaluate.py --samples with generation flags it would ignore, damaged
model folders and unloadable checkpoints through sample.py, a generator that is not one, and list
lengths that contradict another argument. Tiny models on the CPU."""
import json
import logging
import shutil

import pytest
import torch
from PIL import Image

from test_cli_errors import assert_one_line_error, run_cli, tiny
from xswin_fast.checkpoints import CheckpointError, load_newest_checkpoint
from xswin_fast.cli import evaluate, sample, train
from xswin_fast.models import create_model
from xswin_fast.objectives.guidance import as_interval

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(autouse=True)
def fresh_cli_logging():
    """No log handler of an earlier CLI call: it writes to a since closed, captured stdout."""
    log = logging.getLogger("xswin_fast")
    for h in [h for h in log.handlers if getattr(h, "_xswin_cli", False)]:
        log.removeHandler(h)
    yield
    for h in [h for h in log.handlers if getattr(h, "_xswin_cli", False)]:
        log.removeHandler(h)


def test_a_negative_split_seed_is_refused(tmp_path, capsys):
    status, err = run_cli(train.main, tiny(tmp_path / "run", "--split-seed", "-5"), capsys)
    assert_one_line_error(status, err, "--split-seed", ">= 0")  # was numpy's traceback from the split


def test_train_backend_triton_on_a_cpu_is_refused_before_the_run(tmp_path, capsys, monkeypatch):
    from xswin_fast.runs import launch

    monkeypatch.setattr(launch, "interpreter_active", lambda: False)  # a user's CPU: no interpreter
    status, err = run_cli(train.main, tiny(tmp_path / "run", "--backend", "triton", "--device", "cpu"), capsys)
    assert_one_line_error(status, err, "--backend triton", "CUDA")  # was the dispatcher's RuntimeError at step 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("interval", [(0.5, 0.5), (0.0, 0.0)])
def test_an_empty_guidance_interval_is_refused(interval):
    with pytest.raises(ValueError, match=r"lo < hi .*guides no step"):
        as_interval(interval)  # (lo, lo] guided no step and sampled as if --cfg-scale were 1


def test_sample_py_refuses_an_empty_cfg_interval(digits_run, tmp_path, capsys):
    argv = ["--ckpt", str(digits_run), "--num-samples", "2", "--steps", "2", "--out", str(tmp_path / "s"),
            "--cfg-interval", "0.5", "0.5"]
    assert_one_line_error(*run_cli(sample.main, argv, capsys), "--cfg-interval", "guides no step")


def _grey_pngs(folder):
    folder.mkdir()
    for i in range(4):
        Image.new("L", (8, 8), 40 * i).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize("flag", [["--sampler", "ddim"], ["--cfg-scale", "3"], ["--atol", "1e-4"],
                                  ["--guided-channels", "1"], ["--num-samples", "8"], ["--no-ema"]])
def test_evaluate_samples_refuses_generation_flags_it_would_ignore(flag, tmp_path, capsys):
    argv = ["--samples", str(_grey_pngs(tmp_path / "gen")), "--ref", str(_grey_pngs(tmp_path / "ref")), *flag,
            "--metrics", "fid", "--feature-extractor", "digits", "--out", str(tmp_path / "eval")]
    assert_one_line_error(*run_cli(evaluate.main, argv, capsys), flag[0], "--samples")
    assert not (tmp_path / "eval").exists()


def _damaged_model_folder(digits_run, tmp_path, damage):
    folder = shutil.copytree(digits_run / "model", tmp_path / "model")
    damage(folder)
    return folder


def _flip_last_tensor(folder):
    path = folder / "transformer" / WEIGHTS
    data = bytearray(path.read_bytes())
    data[-5] ^= 1
    path.write_bytes(bytes(data))


def _config(folder, **changes):
    path = folder / "transformer" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("damage,names", [
    (_flip_last_tensor, [WEIGHTS, "SHA-256"]),
    (lambda f: _config(f, depths="ab"), ["depths"]),
    (lambda f: _config(f, embed_dim=0), ["embed_dim"]),
    (lambda f: (f / "model_index.json").unlink(), ["not a model folder", "no model_index.json"]),
], ids=["flipped byte", "depths a string", "embed_dim 0", "no model_index.json"])
def test_sample_py_names_a_damaged_model_folder(damage, names, digits_run, tmp_path, capsys):
    folder = _damaged_model_folder(digits_run, tmp_path, damage)
    argv = ["--ckpt", str(folder), "--num-samples", "2", "--steps", "2", "--out", str(tmp_path / "s")]
    assert_one_line_error(*run_cli(sample.main, argv, capsys), str(folder), *names)  # tracebacks before


@pytest.mark.parametrize("content,reason", [(bytes(range(256)) * 40, "not a torch.save archive"),
                                            (b"", "unreadable")], ids=["random bytes", "empty"])
def test_an_unloadable_newest_checkpoint_is_named_with_its_reason(content, reason, digits_run, tmp_path):
    run = shutil.copytree(digits_run, tmp_path / "run")
    newest = sorted((run / "checkpoints").glob("*.pt"))
    for path in newest:
        path.write_bytes(content)
    with pytest.warns(UserWarning), pytest.raises(CheckpointError) as info:
        load_newest_checkpoint(run)
    message = str(info.value)
    assert f"all {len(newest)} are unloadable" in message and newest[-1].name in message and reason in message
    assert "pickled" not in message  # random bytes fail the weights-only unpickler, but are not code


def test_no_checkpoint_at_all_is_said_so(tmp_path):
    with pytest.raises(CheckpointError, match=r"no loadable checkpoint found under .* \(no NNNNNNN\.pt file\)"):
        load_newest_checkpoint(tmp_path)


def test_the_pipeline_refuses_a_generator_that_is_not_one():
    from test_diffusers_pipeline_calls import pixel_pipeline

    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        pixel_pipeline()(class_labels=[0], num_inference_steps=2, output_type="pt", generator=3)  # AttributeError before
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        pixel_pipeline()(class_labels=[0, 1], num_inference_steps=2, output_type="pt", generator=[torch.Generator(), 3])


@pytest.mark.parametrize("preset,kwargs,names", [
    ("XSwin-digits", {"depths": (2,)}, ["num_heads", "len(depths) = 1"]),
    ("DiffiT-digits", {"channels": (32, 64)}, ["depths", "len(channels) = 2"]),
])
def test_list_lengths_that_contradict_another_argument_name_both(preset, kwargs, names):
    with pytest.raises(ValueError) as info:
        create_model(preset, **kwargs)
    assert all(name in str(info.value) for name in names), str(info.value)
