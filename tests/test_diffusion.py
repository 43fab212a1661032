"""The diffusion wiring: DiT's frozen-mean VB term, diffusers' respaced samplers, config round trip."""
import pytest
import torch

from xswin_fast.objectives.eps import Diffusion, autocast_dtype


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


def _ddim_reference_step(d, sched, eps, t, x, clip):
    """DDIM (eta 0) written out in float64: x0 from eps, clipped, eps re-derived from the clipped x0."""
    ac = d.scheduler.alphas_cumprod.double()
    t_prev = t - d.num_timesteps // sched.num_inference_steps
    a, a_prev = ac[t], (ac[t_prev] if t_prev >= 0 else torch.tensor(1.0, dtype=torch.float64))
    x, eps = x.double(), eps.double()
    x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
    if clip:
        x0 = x0.clamp(-1, 1)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
    return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps


@pytest.mark.parametrize("clip", [True, False], ids=["pixel-space", "latents"])
def test_diffusion_ddim_step_rederives_eps_from_the_clipped_x0(clip):
    d = Diffusion(clip_sample=clip)
    sched = d.make_sampler("ddim", 10)
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(4, 2, 4, 4, generator=g), torch.randn(4, 2, 4, 4, generator=g)
    for t in (int(sched.timesteps[1]), int(sched.timesteps[8])):
        a = d.scheduler.alphas_cumprod[t]
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        assert (x0.abs() > 1).float().mean() > 0.2  # clipping is active in most cases
        got = d.step(sched, eps, t, x)
        expected = _ddim_reference_step(d, sched, eps, t, x, clip)
        assert torch.allclose(got.double(), expected, atol=1e-5), (got.double() - expected).abs().max()
        if clip:  # the old update, the model's own eps next to the clipped x0, is far from it
            a_prev = d.scheduler.alphas_cumprod[t - 100] if t >= 100 else torch.tensor(1.0)
            old = a_prev.sqrt() * x0.clamp(-1, 1) + (1 - a_prev).sqrt() * eps
            assert (got - old).abs().max() > 0.1


class _HalfInput(torch.nn.Module):
    """A fixed model: eps = x / 2 (plus a zero variance channel per input channel)."""

    num_classes = 10

    def forward(self, x, t, y):
        return torch.cat([x / 2, torch.zeros_like(x)], dim=1)


def test_diffusion_ddim_sampling_uses_the_corrected_step():
    d = Diffusion(clip_sample=True)
    labels = torch.zeros(3, dtype=torch.long)
    got = d.sample(_HalfInput(), labels, (1, 4, 4), sampler="ddim", steps=4, generator=torch.Generator().manual_seed(1))
    sched = d.make_sampler("ddim", 4)
    x = torch.randn((3, 1, 4, 4), generator=torch.Generator().manual_seed(1))
    for t in sched.timesteps.tolist():
        x = _ddim_reference_step(d, sched, x / 2, t, x, clip=True).float()
    assert torch.allclose(got, x, atol=1e-5)
    assert got.abs().max() <= 1 + 1e-6  # the last step lands on the clipped x0


@pytest.mark.parametrize("cfg", [float("nan"), float("inf"), -float("inf")])
def test_diffusion_sample_refuses_a_non_finite_cfg_scale(cfg):
    with pytest.raises(ValueError, match="cfg_scale must be a finite number"):
        Diffusion().sample(_HalfInput(), torch.zeros(2, dtype=torch.long), (1, 4, 4), steps=2, cfg_scale=cfg)
