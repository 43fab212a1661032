"""train.py run folders exported as ready model folders (an XSwinPipeline plus the run record), and
read back with everything sample.py / evaluate.py take from a checkpoint."""
import json

import pytest
import torch

from xswin_fast.checkpoints import CheckpointError, load_newest_checkpoint
from xswin_fast.objectives.eps import Diffusion
from xswin_fast.pipelines import XSwinPipeline, export_run, is_model_folder, read_model_folder
from xswin_fast.runs.run_dir import load_run


def test_export_run_writes_a_model_folder_that_loads_like_the_run(digits_run, tmp_path):
    out = export_run(digits_run, tmp_path / "model")
    assert is_model_folder(out) and not is_model_folder(digits_run)
    assert {p.name for p in out.iterdir()} == {"model_index.json", "transformer", "scheduler", "xswin_run.json", "split.json",
                                           "xswin_fast_pipeline.py"}
    assert (out / "split.json").read_bytes() == (digits_run / "split.json").read_bytes()
    _, ck = load_newest_checkpoint(digits_run)

    folder = read_model_folder(out, device="cpu", backend="torch")
    run = load_run(str(digits_run), device="cpu", backend="torch")
    ema = ck["ema"]
    assert all(torch.equal(folder.model.state_dict()[k], v) for k, v in ema.items())
    assert folder.codec is None and folder.step == run.step
    assert folder.data == json.loads(json.dumps(run.data)) and folder.args == json.loads(json.dumps(run.args, default=str))
    assert Diffusion.from_config(folder.objective).config() == run.objective.config()

    x = torch.randn(2, 1, 8, 8)
    t, y = torch.tensor([10, 900]), torch.tensor([3, 7])
    torch.testing.assert_close(folder.model(x, t, y), run.model(x, t, y), rtol=0, atol=0)

    pipe = XSwinPipeline.from_pretrained(out)
    pipe.transformer.set_backend("torch")
    assert pipe.get_label_ids(["3"]) == [3] and pipe.scheduler.config.variance_type == "learned_range"
    digits = pipe(class_labels=[0, 9], num_inference_steps=2, output_type="pt").images
    assert digits.shape == (2, 1, 8, 8)


def test_the_raw_weights_export_too(digits_run, tmp_path):
    out = export_run(digits_run, tmp_path / "raw", use_ema=False)
    _, ck = load_newest_checkpoint(digits_run)
    model = read_model_folder(out, device="cpu").model
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ck["model"].items())
    assert json.loads((out / "xswin_run.json").read_text())["weights"] == "model"


def test_what_is_not_a_run_or_a_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not a model folder"):
        read_model_folder(tmp_path)
    with pytest.raises(CheckpointError, match="no loadable checkpoint"):
        export_run(tmp_path, tmp_path / "out")


def test_a_latent_run_exports_its_vae(tmp_path):
    from test_diffusers_pipeline import tiny_vae
    from xswin_fast.checkpoints import plain_data, save_checkpoint
    from xswin_fast.models import create_model

    tiny_vae().save_pretrained(tmp_path / "vae")
    kwargs = {"in_channels": 4, "input_size": 8}
    weights = create_model("XSwin-digits", **kwargs).state_dict()
    data = {"kind": "folder", "classes": [f"c{i}" for i in range(10)], "num_classes": 10, "latent_size": 8, "latent_channels": 4}
    ckpt = {
        "model_name": "XSwin-digits", "model_kwargs": kwargs, "model": weights, "ema": weights, "step": 7,
        "diffusion": plain_data(Diffusion().config()), "data": data, "args": {"vae": str(tmp_path / "vae")},
    }
    save_checkpoint(ckpt, tmp_path / "run" / "checkpoints" / "0000007.pt")

    out = export_run(tmp_path / "run", tmp_path / "model")
    assert (out / "vae" / "config.json").is_file()
    folder = read_model_folder(out, device="cpu", backend="torch")
    assert folder.codec.latent_channels == 4 and folder.codec.downsample == 2 and folder.step == 7
    pipe = XSwinPipeline.from_pretrained(out)
    pipe.transformer.set_backend("torch")
    images = pipe(class_labels=pipe.get_label_ids(["c1", "c2"]), num_inference_steps=2, output_type="np").images
    assert images.shape == (2, 16, 16, 3)


def test_train_py_exports_the_ema_model_and_sample_py_takes_the_folder(digits_run, tmp_path):
    from xswin_fast.cli import sample

    folder = digits_run / "model"
    assert is_model_folder(folder)  # written by the trainer at the end of the run
    run = load_run(str(folder), device="cpu", backend="torch")
    reference = load_run(str(digits_run), device="cpu", backend="torch")
    assert run.run_dir == folder and run.step == reference.step
    assert all(torch.equal(run.model.state_dict()[k], v) for k, v in reference.model.state_dict().items())
    rc = sample.main(["--ckpt", str(folder), "--num-samples", "2", "--steps", "2", "--backend", "torch",
                      "--threads", "1", "--out", str(tmp_path / "samples")])
    assert rc == 0 and len(list((tmp_path / "samples" / "images").glob("*.png"))) == 2


def test_a_flow_run_exports_and_its_pipeline_samples_as_the_flow_sampler(tmp_path):
    from helpers import train_tiny_digits
    from xswin_fast.cli import sample
    from xswin_fast.objectives import FlowMatching, objective_from_config

    run = train_tiny_digits(tmp_path / "flow", "--objective", "flow", "--time-shift", "2", "--sample-sampler", "euler")
    folder = run / "model"  # written by the trainer, as for an eps run
    pipe = XSwinPipeline.from_pretrained(folder)
    pipe.transformer.set_backend("torch")
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler" and pipe.scheduler.config.shift == 2
    objective = objective_from_config(read_model_folder(folder, device="cpu").objective)
    assert isinstance(objective, FlowMatching) and objective.config() == load_run(str(run), device="cpu").objective.config()

    labels = torch.tensor([1, 8])
    reference = objective.sample(pipe.transformer, labels, (1, 8, 8), sampler="euler", steps=5, cfg_scale=2.0,
                                 generator=torch.Generator().manual_seed(3))
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    images = pipe(class_labels=[1, 8], latents=noise, num_inference_steps=5, guidance_scale=2.0, output_type="pt").images
    torch.testing.assert_close(images, (reference / 2 + 0.5).clamp(0, 1), rtol=0, atol=1e-5)

    rc = sample.main(["--ckpt", str(folder), "--num-samples", "2", "--steps", "2", "--backend", "torch",
                      "--threads", "1", "--out", str(tmp_path / "samples")])
    assert rc == 0 and len(list((tmp_path / "samples" / "images").glob("*.png"))) == 2
