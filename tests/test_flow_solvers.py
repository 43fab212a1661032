"""SiT's samplers of a flow model (xswin_fast.objectives.flow_solvers): Euler–Maruyama against a
step-by-step transcription of SiT's algorithm in SiT's own time convention, both samplers against
closed-form Gaussian data, dopri5 on an ODE with a known solution, guidance in sigma and the
guided channels, and the shifted Euler grid's last step quoted in docs/training.md."""
import math

import pytest
import torch

from xswin_fast.objectives.eps import Diffusion
from xswin_fast.objectives.flow import FlowMatching, resolution_shift, shift_time
from xswin_fast.objectives.flow_solvers import dopri5, euler_maruyama
from xswin_fast.objectives.guidance import GuidanceInterval

pytestmark = pytest.mark.usefixtures("single_thread")

MU, S = 0.7, 0.3


class Gaussian(torch.nn.Module):
    """The exact velocity of data N(MU, S^2) under x_t = (1 - t) x0 + t eps (model units t * 1000);
    counts its calls and records the guided channels it was asked for."""

    num_classes = 10

    def __init__(self):
        super().__init__()
        self.y_embedder = torch.nn.Module()
        self.y_embedder.dropout_prob = 0.1
        self.calls, self.guided_channels = 0, []

    def forward(self, x, t, y):
        self.calls += 1
        t = (t.double() / 1000).view(-1, *([1] * (x.dim() - 1)))
        var = (1 - t) ** 2 * S ** 2 + t ** 2
        return (-MU + (t - (1 - t) * S ** 2) * (x.double() - (1 - t) * MU) / var).float()

    def forward_with_cfg(self, x, t, y, cfg_scale, guided_channels=None):
        self.guided_channels.append(guided_channels)
        return self.forward(x, t, y)


def sit_sde_reference(model, init, steps, generator, last_step_size=0.04):
    """SiT's ``sample_sde`` defaults (Euler, diffusion form "sigma", norm 1, last step "Mean") for a
    velocity model on the linear path, written in SiT's time tau (0 = noise, 1 = data;
    x_tau = tau x_data + (1 - tau) x_noise, its velocity the negative of ours)."""
    taus = torch.linspace(0, 1 - last_step_size, steps, dtype=torch.float64)
    dt = float(taus[1] - taus[0])

    def drift(x, tau):
        v = -model(x, torch.full((x.shape[0],), (1 - tau) * 1000), None).double()  # SiT's velocity
        score = (tau * v - x) / (1 - tau)  # get_score_from_velocity: alpha = tau, sigma = 1 - tau
        return v + (1 - tau) * score  # diffusion "sigma": norm * sigma_tau

    x = init.double()
    for tau in taus[:-1].tolist():
        dw = torch.randn(x.shape, generator=generator).double() * math.sqrt(dt)
        x = x + drift(x, tau) * dt + torch.sqrt(torch.tensor(2 * (1 - tau))) * dw
    return x + drift(x, float(taus[-1])) * last_step_size


def test_sde_sampler_is_sits_euler_maruyama_step_by_step():
    model, labels = Gaussian(), torch.zeros(8, dtype=torch.long)
    out = FlowMatching().sample(model, labels, (1, 3, 3), sampler="sde", steps=30, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    init = torch.randn((8, 1, 3, 3), generator=g)
    ref = sit_sde_reference(model, init, 30, g)
    assert torch.allclose(out.double(), ref, atol=1e-4), (out.double() - ref).abs().max()
    assert model.calls == 30 * 2  # steps model calls per run: 29 Euler–Maruyama steps and the last


def test_sde_sampler_draws_gaussian_data():
    calls = []
    out = FlowMatching().sample(Gaussian(), torch.zeros(8192, dtype=torch.long), (1, 1, 1), sampler="sde", steps=250,
                                generator=torch.Generator().manual_seed(0), on_step=lambda: calls.append(1))
    assert len(calls) == 250
    assert abs(out.mean().item() - MU) < 0.01 and abs(out.std().item() - S) < 0.015, (out.mean(), out.std())
    with pytest.raises(ValueError, match="diffusion_form"):
        euler_maruyama(lambda x, t: x, torch.zeros(1), 5, diffusion_form="SBDM")
    with pytest.raises(ValueError, match="at least 2"):
        euler_maruyama(lambda x, t: x, torch.zeros(1), 1)


def test_dopri5_reaches_the_exact_endpoint_of_gaussian_data():
    # the flow map of N(0, 1) -> N(MU, S^2) is x_1 -> MU + S x_1: each sample's endpoint is known
    labels = torch.zeros(64, dtype=torch.long)
    exact = MU + S * torch.randn((64, 1, 4, 4), generator=torch.Generator().manual_seed(3))

    def error(**tolerances):
        model = Gaussian()
        out = FlowMatching().sample(model, labels, (1, 4, 4), sampler="dopri5", steps=None,
                                    generator=torch.Generator().manual_seed(3), ode_options=tolerances)
        return (out - exact).abs().max().item(), model.calls

    default, calls = error()
    tight, tight_calls = error(atol=1e-9, rtol=1e-8)
    assert default < 1e-2 and tight < 2e-5 and tight_calls > calls, (default, tight, calls, tight_calls)
    with pytest.raises(ValueError, match="steps"):
        FlowMatching().sample(Gaussian(), labels, (1, 4, 4), sampler="dopri5", steps=25)


def test_dopri5_solves_a_linear_ode_to_its_tolerance():
    # dx/dt = -2 t x from t = 1 to 0: x(0) = x(1) * e
    x1 = torch.linspace(-2, 2, 11, dtype=torch.float64)
    for rtol, bound in ((1e-3, 1e-2), (1e-8, 1e-6)):
        steps = []
        x0 = dopri5(lambda x, t: -2 * t * x, x1, atol=1e-12, rtol=rtol, on_step=lambda: steps.append(1))
        assert (x0 - x1 * math.e).abs().max().item() < bound * math.e * 2
    assert len(steps) > 3
    with pytest.raises(RuntimeError, match="not finite"):
        dopri5(lambda x, t: x / 0 * 0, torch.ones(3))


@pytest.mark.parametrize("options", [{"atol": 0.0}, {"rtol": -1e-3}, {"atol": math.inf}, {"rtol": math.nan},
                                     {"atol": True}, {"rtol": "1e-3"}])
def test_dopri5_refuses_tolerances_that_are_not_finite_positive_floats(options):
    name = next(iter(options))
    with pytest.raises(ValueError, match=f"{name} must be a finite float > 0"):
        dopri5(lambda x, t: -x, torch.ones(3), **options)


def test_guidance_interval_in_sigma_is_half_open_for_both_objectives():
    interval = GuidanceInterval(0.28, 5.42, "sigma")
    assert not interval.contains(0.5, 0.28) and interval.contains(0.5, 5.42) and not interval.contains(0.5, 5.43)
    assert not GuidanceInterval(0.2, 0.6).contains(0.2, 0.0) and GuidanceInterval(0.2, 0.6).contains(0.6, 0.0)
    flow_levels = _guided_levels(FlowMatching(), "euler", interval)
    assert flow_levels["guided"] and flow_levels["plain"]
    assert all(0.28 < t / (1 - t) <= 5.42 for t in flow_levels["guided"])
    assert not any(t < 1 and 0.28 < t / (1 - t) <= 5.42 for t in flow_levels["plain"])
    eps = Diffusion()
    sigma = eps._table["sqrt_recipm1_ac"]
    levels = _guided_levels(eps, "ddim", GuidanceInterval(0.5, 2.0, "sigma"))
    assert levels["guided"] and levels["plain"]
    assert all(0.5 < sigma[round(t * 1000)] <= 2.0 for t in levels["guided"])
    assert not any(0.5 < sigma[round(t * 1000)] <= 2.0 for t in levels["plain"])
    with pytest.raises(ValueError, match="cfg_interval"):
        _guided_levels(FlowMatching(), "euler", GuidanceInterval(0.5, 1.5, "t"))


def _guided_levels(objective, sampler, interval):
    levels = {"guided": [], "plain": []}

    class Spy(Gaussian):
        def forward(self, x, t, y):
            levels["plain"].append(t[0].item() / 1000)
            return torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:])

        def forward_with_cfg(self, x, t, y, cfg_scale, guided_channels=None):
            levels["guided"].append(t[0].item() / 1000)
            return torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:])

    objective.sample(Spy(), torch.zeros(2, dtype=torch.long), (1, 2, 2), sampler=sampler, steps=20, cfg_scale=2.0,
                     cfg_interval=interval)
    return levels


@pytest.mark.parametrize("objective,sampler,steps", [(Diffusion(), "ddim", 3), (FlowMatching(), "euler", 3),
                                                     (FlowMatching(), "sde", 3), (FlowMatching(), "dopri5", None)])
def test_guided_channels_reach_forward_with_cfg(objective, sampler, steps):
    model = Gaussian()
    objective.sample(model, torch.zeros(2, dtype=torch.long), (1, 2, 2), sampler=sampler, steps=steps, cfg_scale=1.5,
                     guided_channels=1)
    assert model.guided_channels and set(model.guided_channels) == {1}


def test_sd3_resolution_shift_counts_pixels_not_channels():
    assert resolution_shift(256, 256) == 1.0 and resolution_shift(512, 512) == 2.0 and resolution_shift(1024, 1024) == 4.0


def test_diffusers_shifted_euler_grid_ends_at_the_doubly_shifted_time():
    # docs/training.md: at shift 3 the last nonzero time is shift(shift(1/T)) = 0.00893, not shift(1/T)
    sigmas = FlowMatching(time_shift=3.0).make_sampler("euler", 25).sigmas
    twice = shift_time(shift_time(torch.tensor(1e-3, dtype=torch.float64), 3.0), 3.0).item()
    assert sigmas[-1] == 0 and math.isclose(float(sigmas[-2]), twice, rel_tol=1e-5)
    assert round(twice, 5) == 0.00893
