"""Flow matching: the interpolant and its target, time sampling and shift, the ODE samplers against
a closed-form velocity, guidance intervals, and a flow run through train.py, sample.py and resume."""
import json
import math

import pytest
import torch

from families import FAMILIES, tiny
from helpers import randomize_
from xswin_fast.models import create_model
from xswin_fast.objectives import Diffusion, FlowMatching, objective_from_config, resolution_shift, shift_time

pytestmark = pytest.mark.usefixtures("single_thread")


def test_flow_interpolant_and_velocity_target_are_the_literal_formulas():
    fm = FlowMatching()
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    t = torch.tensor([0.0, 250.0, 1000.0])  # model units: t * 1000
    x_t = fm.add_noise(x0, noise, t)
    for i, s in enumerate((0.0, 0.25, 1.0)):
        assert torch.allclose(x_t[i], (1 - s) * x0[i] + s * noise[i], atol=1e-6)
    v = torch.randn(3, 2, 4, 4, generator=g)
    loss = fm.training_losses(v, x0, x_t, t, noise)
    expected = ((noise - x0 - v) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(loss["mse"], expected) and torch.equal(loss["loss"], loss["mse"])
    assert torch.count_nonzero(loss["vb"]) == 0


def test_flow_ignores_the_variance_channels_of_a_learned_sigma_output():
    fm = FlowMatching()
    x0, noise = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    t = fm.sample_timesteps(2, "cpu")
    out = torch.randn(2, 6, 4, 4, requires_grad=True)
    fm.training_losses(out, x0, fm.add_noise(x0, noise, t), t, noise)["loss"].sum().backward()
    assert out.grad[:, :3].abs().sum() > 0 and out.grad[:, 3:].abs().sum() == 0


def test_flow_time_sampling_and_shift():
    assert torch.allclose(shift_time(torch.tensor([0.0, 0.5, 1.0]), 3.0), torch.tensor([0.0, 0.75, 1.0]))
    assert resolution_shift(256, 256) == 1.0 and resolution_shift(512, 512) == 2.0
    torch.manual_seed(0)
    uniform = FlowMatching(time_shift=3.0).sample_timesteps(20000, "cpu") / 1000
    assert 0 <= uniform.min() and uniform.max() <= 1
    assert abs(uniform.median().item() - 0.75) < 0.01  # the median 0.5 of U(0, 1), shifted
    logit = FlowMatching(t_sampling="logit-normal", logit_mean=1.0, logit_std=0.5).sample_timesteps(20000, "cpu") / 1000
    z = torch.log(logit / (1 - logit))
    assert abs(z.mean().item() - 1.0) < 0.02 and abs(z.std().item() - 0.5) < 0.02
    with pytest.raises(ValueError, match="t_sampling"):
        FlowMatching(t_sampling="beta")
    with pytest.raises(ValueError, match="time_shift"):
        FlowMatching(time_shift=0.0)


def test_flow_config_round_trip_and_eps_configs_stay_eps():
    fm = FlowMatching(num_train_timesteps=500, time_shift=2.0, t_sampling="logit-normal", logit_std=0.8)
    back = objective_from_config(json.loads(json.dumps(fm.config())))
    assert isinstance(back, FlowMatching) and back.config() == fm.config()
    eps = objective_from_config(Diffusion(learn_sigma=False).config())  # a config from before flow matching
    assert isinstance(eps, Diffusion) and eps.name == "eps" and not eps.learn_sigma
    with pytest.raises(ValueError, match="objective"):
        objective_from_config({"objective": "score"})


def test_flow_loss_lowers_on_a_fixed_batch_for_a_learned_sigma_backbone():
    torch.manual_seed(0)
    model = create_model("XSwin-digits", input_size=8, in_channels=1, num_classes=10, embed_dim=16, depths=[1, 1],
                         num_heads=[1, 1], bottleneck_depth=1)
    model.set_backend("torch")
    assert model.out_channels == 2  # learned sigma: the second channel gets no flow target
    fm = FlowMatching()
    x0, noise, y = torch.rand(16, 1, 8, 8) * 2 - 1, torch.randn(16, 1, 8, 8), torch.arange(16) % 10
    t = fm.sample_timesteps(16, "cpu")
    x_t = fm.add_noise(x0, noise, t)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = fm.training_losses(model(x_t, t, y), x0, x_t, t, noise)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("learn_sigma", [True, False])
@pytest.mark.parametrize("cls", FAMILIES, ids=lambda c: c.__name__)
def test_every_backbone_trains_with_both_objectives(cls, learn_sigma):
    model = randomize_(tiny(cls, learn_sigma=learn_sigma))
    x0 = torch.randn(2, model.in_channels, model.input_size, model.input_size)
    y = torch.tensor([0, 1])
    for objective in (Diffusion(learn_sigma=learn_sigma), FlowMatching(time_shift=2.0)):
        model.zero_grad()
        noise, t = torch.randn_like(x0), objective.sample_timesteps(2, "cpu")
        x_t = objective.add_noise(x0, noise, t)
        loss = objective.training_losses(model(x_t, t, y), x0, x_t, t, noise)["loss"].mean()
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(bool(g.abs().sum() > 0) for g in grads) > len(grads) // 2, (cls.__name__, objective.name)


class GaussianVelocity(torch.nn.Module):
    """The exact velocity of data N(mu, s^2) (every element independent) under x_t = (1 - t) x0 + t eps:
    v = E[eps - x0 | x_t] = -mu + (t - (1 - t) s^2) (x_t - (1 - t) mu) / ((1 - t)^2 s^2 + t^2)."""

    num_classes = 10

    def __init__(self, mu: float, s: float):
        super().__init__()
        self.mu, self.s = mu, s

    def forward(self, x, t, y):
        t = (t.double() / 1000).view(-1, 1, 1, 1)
        var = (1 - t) ** 2 * self.s ** 2 + t ** 2
        v = -self.mu + (t - (1 - t) * self.s ** 2) * (x.double() - (1 - t) * self.mu) / var
        return v.float()


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_ode_samplers_reach_the_exact_endpoint_of_gaussian_data(shift):
    # the flow map of N(0, 1) -> N(mu, s^2) is the affine x_1 -> mu + s x_1: each sample's endpoint is known
    mu, s = 0.7, 0.3
    fm = FlowMatching(time_shift=shift)
    model, labels = GaussianVelocity(mu, s), torch.zeros(64, dtype=torch.long)
    x1 = torch.randn((64, 1, 4, 4), generator=torch.Generator().manual_seed(3))
    exact = mu + s * x1

    def error(sampler, steps):
        out = fm.sample(model, labels, (1, 4, 4), sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(3))
        return (out - exact).abs().max().item()

    euler, heun = error("euler", 25), error("heun", 25)
    assert heun < 5e-3 and heun < 0.1 * euler, (euler, heun)  # second order
    assert error("euler", 200) < 0.25 * euler  # first order converging
    out = fm.sample(model, torch.zeros(4096, dtype=torch.long), (1, 1, 1), sampler="heun", steps=25)
    assert abs(out.mean().item() - mu) < 0.02 and abs(out.std().item() - s) < 0.02


class Spy(torch.nn.Module):
    """A model that records the noise level t / 1000 of every plain and every guided call."""

    num_classes = 10

    def __init__(self):
        super().__init__()
        self.y_embedder = torch.nn.Module()
        self.y_embedder.dropout_prob = 0.1
        self.plain, self.guided = [], []

    def forward(self, x, t, y):
        self.plain.append(t[0].item() / 1000)
        assert (y < self.num_classes).all()  # no null label outside guidance
        return torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:])

    def forward_with_cfg(self, x, t, y, cfg_scale):
        self.guided.append(t[0].item() / 1000)
        assert (y[len(y) // 2:] == self.num_classes).all()
        return torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:])


@pytest.mark.parametrize("objective,sampler", [(Diffusion(), "ddpm"), (Diffusion(), "ddim"), (FlowMatching(), "euler"),
                                               (FlowMatching(time_shift=3.0), "heun")])
def test_guidance_interval_bounds_are_honoured(objective, sampler):
    lo, hi = 0.2, 0.6
    spy = Spy()
    objective.sample(spy, torch.zeros(2, dtype=torch.long), (1, 4, 4), sampler=sampler, steps=20, cfg_scale=2.0,
                     cfg_interval=(lo, hi))
    assert spy.guided and spy.plain
    assert all(lo < level <= hi for level in spy.guided), spy.guided  # half-open (lo, hi], as the paper
    assert not any(lo < level <= hi for level in spy.plain), spy.plain
    everywhere = Spy()
    objective.sample(everywhere, torch.zeros(2, dtype=torch.long), (1, 4, 4), sampler=sampler, steps=20, cfg_scale=2.0)
    assert not everywhere.plain and len(everywhere.guided) == len(spy.guided) + len(spy.plain)
    with pytest.raises(ValueError, match="cfg_interval"):
        objective.sample(Spy(), torch.zeros(2, dtype=torch.long), (1, 4, 4), sampler=sampler, steps=2, cfg_scale=2.0,
                         cfg_interval=(0.7, 0.1))


def test_flow_heun_progress_counts_solver_steps():
    calls = []
    FlowMatching().sample(GaussianVelocity(0.0, 1.0), torch.zeros(2, dtype=torch.long), (1, 2, 2), sampler="heun",
                          steps=5, on_step=lambda: calls.append(1))
    assert len(calls) == 5
    with pytest.raises(ValueError, match="sampler"):
        FlowMatching().make_sampler("ddpm", 5)
    assert math.isclose(float(FlowMatching().make_sampler("euler", 5).timesteps[0]), 1000.0)


def test_sample_py_runs_sits_samplers_on_a_flow_run(tmp_path, monkeypatch):
    """sample.py --sampler sde with --guided-channels and a σ interval on a trained flow run, and
    dopri5 with its tolerances given and by default (the folder name records each setting that is
    not a default; dopri5 receives the tolerances); --steps refused for the adaptive dopri5, and
    --atol / --rtol for the fixed-step samplers."""
    from xswin_fast.cli import sample, train
    from xswin_fast.objectives import flow
    from xswin_fast.objectives.flow_solvers import dopri5

    tolerances = []

    def recording_dopri5(velocity, x, **options):  # the solver itself: test_flow_solvers.py
        tolerances.append((options["atol"], options["rtol"]))
        return dopri5(velocity, x, atol=0.1, rtol=0.1)  # at SiT's 1e-6 a 1-step model takes minutes on a CPU

    monkeypatch.setattr(flow, "dopri5", recording_dopri5)

    run = tmp_path / "run"
    assert train.main(["--run-dir", str(run), "--objective", "flow", "--model-kwargs", tiny_kwargs(), "--backend", "torch",
                       "--threads", "1", "--global-batch-size", "16", "--sample-every", "0", "--sample-num", "2",
                       "--sample-steps", "2", "--no-progress", "--max-steps", "1"]) == 0
    common = ["--ckpt", str(run), "--num-samples", "2", "--cfg-scale", "1.5", "--guided-channels", "1", "--no-progress",
              "--backend", "torch", "--threads", "1"]  # the sampler under test, not the interpreted kernels
    assert sample.main([*common, "--sampler", "sde", "--steps", "4", "--cfg-interval-sigma", "0.28", "5.42"]) == 0
    assert sample.main([*common, "--sampler", "dopri5", "--atol", "1e-4", "--rtol", "0.01"]) == 0
    assert sample.main([*common, "--sampler", "dopri5"]) == 0
    assert tolerances == [(1e-4, 0.01), (1e-6, 1e-3)]  # the second: SiT's defaults
    with pytest.raises(SystemExit, match="--steps does not apply to --sampler dopri5"):
        sample.main([*common, "--sampler", "dopri5", "--steps", "10"])
    with pytest.raises(SystemExit, match="--atol applies only to the adaptive --sampler dopri5, not to sde"):
        sample.main([*common, "--sampler", "sde", "--atol", "1e-4"])
    names = sorted(p.name for p in run.glob("samples-*"))
    assert names == ["samples-0000001-dopri5-cfg1.5-gc1-seed0", "samples-0000001-dopri5-tol0.0001-0.01-cfg1.5-gc1-seed0",
                     "samples-0000001-sde4-cfg1.5-gc1-ints0.28-5.42-seed0"], names
    for name in names:
        assert len(list((run / name / "images").glob("*.png"))) == 2


def tiny_kwargs():
    from families import TINY_DIGITS

    return TINY_DIGITS
