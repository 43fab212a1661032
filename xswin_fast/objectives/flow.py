"""Flow matching (rectified flow, SiT's linear interpolant): velocity targets and ODE samplers.

Training: a time t in [0, 1] per sample (0 = data, 1 = pure noise),

    x_t = (1 - t) * x_0 + t * eps,        target v = dx_t / dt = eps - x_0,

and the loss is ``mean((v - v_pred)^2)``. t is drawn uniformly or logit-normally (SD3:
``t = sigmoid(m + s * n)``, n ~ N(0, 1)), then shifted by ``time_shift`` s (SD3, Esser et al.
2024, section 5.3.2):

    t' = s * t / (1 + (s - 1) * t)

s > 1 moves the times toward noise, as a higher resolution needs (more pixels keep more signal at
a given t); :func:`resolution_shift` gives SD3's ``sqrt(m / n)`` for an image of m pixels against
a base of n = 256 * 256 (SD3 trained its base at 256 px through the SD VAE; its rule is about the
image resolution, so it does not count channels). SD3 found 3.0 best at 1024 px, where the rule
gives 4.

The model sees ``t * num_train_timesteps`` (0..1000, float): its sinusoidal timestep embedding
spans the same range as an eps model's integer steps, and it is what diffusers' flow-matching
schedulers pass. Every ``t`` argument below is in these model units.

Sampling integrates dx/dt = v from t = 1 to t = 0 with diffusers' ``FlowMatchEulerDiscreteScheduler``
("euler") or ``FlowMatchHeunDiscreteScheduler`` ("heun", second order: two model calls per step
except the last, 2N - 1 in all), both with the training's ``time_shift`` and diffusers' own grid:
N times evenly spaced from 1 to the unshifted time of shift(1/T), then shifted, and a last step to
0. diffusers shifts twice at the low end: the last nonzero time is shift(shift(1/T)) (0.00893 at
shift 3, T = 1000), not shift(1/T) (0.00299). SiT's samplers (:mod:`.flow_solvers`): "sde"
(Euler–Maruyama, SiT's FID sampler at 250 steps) and "dopri5" (adaptive, ``steps`` does not apply).

Learned sigma: a backbone built with ``learn_sigma`` outputs 2C channels. Flow matching has no
variance to learn, so the loss reads the first C channels (the velocity), the other C get no
gradient and sampling ignores them: every backbone trains unchanged and keeps its state-dict layout.
"""
import math
from typing import Any, Callable, Dict, Optional

import torch

from ..compat import ensure_torchvision_importable
from .flow_solvers import dopri5, euler_maruyama
from .guidance import Interval, check_guidance, guided_at, model_output

FLOW_SAMPLERS = ("euler", "heun", "sde", "dopri5")
ADAPTIVE_SAMPLERS = ("dopri5",)  # no fixed step count
SDE_DEFAULT_STEPS = 250  # SiT's FID setting
T_SAMPLINGS = ("uniform", "logit-normal")
# the image pixels where SD3's resolution-dependent shift is 1
SHIFT_BASE_PIXELS = 256 * 256


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's timestep shift ``s * t / (1 + (s - 1) * t)`` of times t in [0, 1] (any shape)."""
    return shift * t / (1 + (shift - 1) * t)


def resolution_shift(height: int, width: int) -> float:
    """SD3's resolution-dependent shift ``sqrt(m / n)`` for images of ``height`` x ``width`` pixels
    (not latents): m = height * width, n = :data:`SHIFT_BASE_PIXELS`."""
    return math.sqrt(height * width / SHIFT_BASE_PIXELS)


class FlowMatching:
    """Training targets and ODE samplers of the linear interpolant (objective "flow").

    Args:
        num_train_timesteps (int): T, the scale of the model's timesteps (t * T). Default: 1000.
        time_shift (float): SD3's shift s > 0 of the training and sampling times (1 = none). Default: 1.
        t_sampling (str): "uniform" or "logit-normal" training times. Default: "uniform".
        logit_mean, logit_std (float): the logit-normal's m and s > 0. Default: 0, 1.
    """

    name = "flow"
    samplers, default_sampler, default_steps = FLOW_SAMPLERS, "euler", 25

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        time_shift: float = 1.0,
        t_sampling: str = "uniform",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
    ):
        if t_sampling not in T_SAMPLINGS:
            raise ValueError(f"t_sampling must be one of {T_SAMPLINGS}, got {t_sampling!r}")
        if not (math.isfinite(time_shift) and time_shift > 0):
            raise ValueError(f"time_shift must be a finite number > 0, got {time_shift}")
        if not (math.isfinite(logit_std) and logit_std > 0 and math.isfinite(logit_mean)):
            raise ValueError(f"logit_mean must be finite and logit_std finite and > 0, got {logit_mean}, {logit_std}")
        self.num_timesteps = int(num_train_timesteps)
        self.time_shift = float(time_shift)
        self.t_sampling, self.logit_mean, self.logit_std = t_sampling, float(logit_mean), float(logit_std)
        self.learn_sigma = False  # the variance channels of a learned-sigma backbone are ignored

    def config(self) -> Dict[str, Any]:
        """What a checkpoint stores as "objective" (its "objective" key tells it from an eps config)."""
        return {"objective": self.name, "num_train_timesteps": self.num_timesteps, "time_shift": self.time_shift,
                "t_sampling": self.t_sampling, "logit_mean": self.logit_mean, "logit_std": self.logit_std}

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "FlowMatching":
        """The inverse of :meth:`config`."""
        return cls(**{k: v for k, v in config.items() if k != "objective"})

    def sample_timesteps(self, n: int, device) -> torch.Tensor:
        """(n,) float32 training times, shifted, in model units (t * T)."""
        if self.t_sampling == "uniform":
            t = torch.rand(n, device=device)
        else:
            t = torch.sigmoid(self.logit_mean + self.logit_std * torch.randn(n, device=device))
        return shift_time(t, self.time_shift) * self.num_timesteps

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = (1 - t) x0 + t noise for x0, noise (B, ...) and t (B,) in model units."""
        s = (t.float() / self.num_timesteps).view(-1, *([1] * (x0.dim() - 1)))
        return ((1 - s) * x0.float() + s * noise.float()).to(x0.dtype)

    def training_losses(
        self, model_output: torch.Tensor, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> Dict[str, torch.Tensor]:
        """Per-sample losses {"loss", "mse", "vb"} (each (B,)): the velocity MSE against
        ``noise - x_start`` over the first C output channels; "vb" is 0 (no variance is learned)."""
        C = x_start.shape[1]
        v = model_output.float()[:, :C]
        mse = ((noise.float() - x_start.float()) - v).pow(2).mean(dim=tuple(range(1, v.dim())))
        return {"loss": mse, "mse": mse, "vb": torch.zeros_like(mse)}

    def make_sampler(self, name: str = "euler", steps: int = 25):
        """A diffusers flow-matching scheduler for ``steps`` steps: "euler" or "heun" (the SiT
        samplers "sde" and "dopri5" have none: :meth:`sample` runs them)."""
        ensure_torchvision_importable()
        from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler

        if name not in FLOW_SAMPLERS[:2]:
            raise ValueError(f"sampler must be one of {FLOW_SAMPLERS[:2]} for a diffusers scheduler, got {name!r}")
        if steps < 1 or steps > self.num_timesteps:
            raise ValueError(f"sampling steps must be in [1, {self.num_timesteps}], got {steps}")
        cls = FlowMatchEulerDiscreteScheduler if name == "euler" else FlowMatchHeunDiscreteScheduler
        sched = cls(num_train_timesteps=self.num_timesteps, shift=self.time_shift)
        sched.set_timesteps(steps)
        return sched

    @torch.no_grad()
    def sample(
        self,
        model,
        labels: torch.Tensor,
        shape,
        *,
        sampler: str = "euler",
        steps: Optional[int] = 25,
        cfg_scale: float = 1.0,
        cfg_interval: Interval = None,
        generator: Optional[torch.Generator] = None,
        autocast_dtype: Optional[torch.dtype] = None,
        on_step: Optional[Callable[[], Any]] = None,
        guided_channels: Optional[int] = None,
        sde_options: Optional[Dict[str, Any]] = None,
        ode_options: Optional[Dict[str, Any]] = None,
    ) -> torch.Tensor:
        """Integrate ``len(labels)`` samples of ``shape`` (C, H, W) from noise (t = 1) to data.

        ``model`` (eval mode) maps (x, t * T, labels) to a velocity in its first C channels.
        Guidance as in ``Diffusion.sample`` (noise level t, or σ = t / (1 - t)). ``on_step`` is
        called once per completed solver step (a Heun step's two model calls count as one; an
        SDE step is one model call; a dopri5 step is an accepted step). ``steps`` must be None
        for "dopri5"; ``sde_options`` go to ``euler_maruyama`` (diffusion_form, diffusion_norm,
        last_step_size), ``ode_options`` to ``dopri5`` (atol, rtol)."""
        interval = check_guidance(model, cfg_scale, cfg_interval)
        if sampler not in FLOW_SAMPLERS:
            raise ValueError(f"sampler must be one of {FLOW_SAMPLERS} for a flow model, got {sampler!r}")
        if (steps is None) != (sampler in ADAPTIVE_SAMPLERS):
            raise ValueError(f"steps must be None for the adaptive {ADAPTIVE_SAMPLERS} and an int otherwise, got {steps}")
        device = labels.device
        B, C = labels.shape[0], shape[0]
        x = torch.randn((B, *shape), generator=generator, device=generator.device if generator else device)
        x = x.to(device)

        def velocity(x: torch.Tensor, level: float) -> torch.Tensor:
            tt = torch.full((B,), level * self.num_timesteps, device=device)
            sigma = level / (1 - level) if level < 1 else math.inf
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                out = model_output(model, x, tt, labels, cfg_scale, guided_at(level, cfg_scale, interval, sigma),
                                   guided_channels)
            return out.float()[:, :C]

        if sampler == "sde":
            grid = (lambda t: shift_time(t, self.time_shift)) if self.time_shift != 1 else None
            return euler_maruyama(velocity, x, steps, generator=generator, grid=grid, on_step=on_step, **(sde_options or {}))
        if sampler == "dopri5":
            return dopri5(velocity, x, on_step=on_step, **(ode_options or {}))
        return self._diffusers_sample(velocity, x, sampler, steps, on_step)

    def _diffusers_sample(self, velocity, x: torch.Tensor, sampler: str, steps: int, on_step) -> torch.Tensor:
        sched = self.make_sampler(sampler, steps)
        last = len(sched.timesteps) - 1
        for i, t in enumerate(sched.timesteps):
            x = sched.step(velocity(x, float(t) / self.num_timesteps), t, x).prev_sample
            if on_step is not None and (getattr(sched, "state_in_first_order", True) or i == last):
                on_step()
        return x
