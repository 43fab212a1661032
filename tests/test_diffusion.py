"""The diffusion wiring: DiT's frozen-mean VB term, diffusers' respaced samplers, config round trip."""
import pytest
import torch

from xswin_fast.diffusion import Diffusion, autocast_dtype


def test_diffusion_vb_gradient_reaches_only_the_variance_channels():
    d = Diffusion()
    x0 = torch.rand(4, 2, 4, 4) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 1, 500, 999])
    xt = d.add_noise(x0, noise, t)
    out = torch.randn(4, 4, 4, 4, requires_grad=True)
    d.training_losses(out, x0, xt, t, noise)["vb"].sum().backward()
    assert out.grad[:, :2].abs().sum() == 0 and out.grad[:, 2:].abs().sum() > 0  # frozen mean


def test_diffusion_schedulers_are_diffusers_respaced():
    d = Diffusion()
    ddpm = d.make_sampler("ddpm", 50)
    assert type(ddpm).__name__ == "DDPMScheduler" and ddpm.config.variance_type == "learned_range"
    assert ddpm.timesteps[0] == 999 and ddpm.timesteps[-1] == 0 and len(ddpm.timesteps) == 50
    ddim = d.make_sampler("ddim", 10)
    assert type(ddim).__name__ == "DDIMScheduler" and len(ddim.timesteps) == 10 and ddim.timesteps[0] == 999
    assert torch.allclose(d.scheduler.betas[[0, -1]], torch.tensor([1e-4, 0.02]))


def test_diffusion_from_config_round_trip():
    d = Diffusion(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", learn_sigma=False, clip_sample=True)
    e = Diffusion.from_config(d.config())
    assert e.config() == d.config() and not e.learn_sigma and e.clip_sample
    assert torch.equal(e.scheduler.betas, d.scheduler.betas)


def test_autocast_dtype_follows_precision_and_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("auto", cuda) is torch.bfloat16
    assert autocast_dtype("bf16", cpu) is torch.bfloat16 and autocast_dtype("fp32", cuda) is None
    with pytest.raises(ValueError, match="precision"):
        autocast_dtype("fp16", cpu)
