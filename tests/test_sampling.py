"""sample.py on a tiny digits checkpoint; the diffusion and sampler wiring."""
import json

import pytest
import torch

from xswin_fast.training import sampling
from xswin_fast.training.diffusion import Diffusion


@pytest.mark.parametrize("sampler,extra", [("ddim", ["--cfg-scale", "3.0"]), ("ddpm", ["--no-ema", "--labels", "3,7"])])
def test_sample_writes_grid_and_png_folder(digits_run, tmp_path, sampler, extra):
    out = tmp_path / "samples"
    rc = sampling.main(["--ckpt", str(digits_run), "--num-samples", "12", "--steps", "4", "--sampler", sampler,
                        "--seed", "1", "--out", str(out), "--backend", "torch", *extra])
    assert rc == 0
    pngs = sorted((out / "images").glob("*.png"))
    assert len(pngs) == 12 and (out / "grid.png").stat().st_size > 0
    labels = json.loads((out / "labels.json").read_text())["labels"]
    assert labels == ([3, 7] * 6 if "--labels" in extra else [i % 10 for i in range(12)])
    from PIL import Image

    with Image.open(pngs[0]) as im:
        assert im.size == (8, 8) and im.mode == "L"


def test_sample_is_deterministic_for_a_seed(digits_run):
    run = sampling.load_run(str(digits_run), "cpu", backend="torch")
    a = sampling.generate(run, [0, 1, 2], "ddpm", 3, 2.0, seed=5)
    b = sampling.generate(run, [0, 1, 2], "ddpm", 3, 2.0, seed=5)
    c = sampling.generate(run, [0, 1, 2], "ddpm", 3, 2.0, seed=6)
    assert a.dtype == torch.uint8 and a.shape == (3, 1, 8, 8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sampling_vb_gradient_reaches_only_the_variance_channels():
    d = Diffusion()
    x0 = torch.rand(4, 2, 4, 4) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 1, 500, 999])
    xt = d.add_noise(x0, noise, t)
    out = torch.randn(4, 4, 4, 4, requires_grad=True)
    d.training_losses(out, x0, xt, t, noise)["vb"].sum().backward()
    assert out.grad[:, :2].abs().sum() == 0 and out.grad[:, 2:].abs().sum() > 0  # frozen mean


def test_sampling_schedulers_are_diffusers_respaced():
    d = Diffusion()
    ddpm = d.make_sampler("ddpm", 50)
    assert type(ddpm).__name__ == "DDPMScheduler" and ddpm.config.variance_type == "learned_range"
    assert ddpm.timesteps[0] == 999 and ddpm.timesteps[-1] == 0 and len(ddpm.timesteps) == 50
    ddim = d.make_sampler("ddim", 10)
    assert type(ddim).__name__ == "DDIMScheduler" and len(ddim.timesteps) == 10 and ddim.timesteps[0] == 999
    assert torch.allclose(d.scheduler.betas[[0, -1]], torch.tensor([1e-4, 0.02]))
