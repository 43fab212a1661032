"""Gaussian diffusion on top of diffusers' schedulers, with DiT's learned-sigma hybrid loss.

Training noise comes from a ``DDPMScheduler`` (1000 steps, linear betas 1e-4 -> 0.02, DiT's
``create_diffusion("")``); sampling uses a respaced ``DDPMScheduler`` (``variance_type=
"learned_range"``, evenly spaced timesteps including 0, as DiT's ``space_timesteps``) or a
``DDIMScheduler`` (eta 0, "trailing" spacing, final alpha 1). When the predicted x0 is clipped
(pixel space), DDIM re-derives eps from the clipped x0, as ADM's and DiT's ``ddim_sample`` do.

The loss is DiT's ``GaussianDiffusion.training_losses`` with ``LossType.MSE``:
``loss = mse(eps) + vb`` where ``vb`` is the variational bound term of the *learned variance
only*: the predicted mean is built from the detached eps ("frozen mean"), so the VB gradient
reaches just the variance channels (Nichol & Dhariwal's L_hybrid without its 1/1000 weight, as
in DiT, which does not rescale it). At t = 0 the VB term is the discretized-Gaussian decoder
NLL, elsewhere KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)), both in bits per dimension.
"""
import math
from typing import Any, Callable, Dict, Optional

import torch

from ..compat import ensure_torchvision_importable
from .guidance import Interval, check_guidance, guided_at, model_output

SAMPLERS = ("ddpm", "ddim")
PRECISIONS = ("auto", "bf16", "fp32")


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """--precision as an autocast dtype: "bf16" (or "auto" on CUDA) -> bfloat16, else None (fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.bfloat16 if bf16 else None


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.dim())))


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x, means, log_scales) -> torch.Tensor:
    """Log-likelihood of data in [-1, 1] quantised to 256 bins under N(means, exp(log_scales)^2)."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta))


class Diffusion:
    """Noise schedule, training losses and samplers for eps-prediction models (objective "eps").

    Args:
        num_train_timesteps (int): diffusion steps T. Default: 1000.
        beta_schedule (str): diffusers beta schedule. Default: "linear".
        beta_start, beta_end (float): the linear schedule's ends. Default: 1e-4, 0.02.
        learn_sigma (bool): the model outputs 2C channels (eps, variance interpolation). Default: True.
        clip_sample (bool): clip predicted x0 to [-1, 1] when sampling (pixel space). Default: False.
    """

    name = "eps"
    samplers, default_sampler, default_steps = SAMPLERS, "ddpm", 250

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        learn_sigma: bool = True,
        clip_sample: bool = False,
    ):
        ensure_torchvision_importable()
        from diffusers import DDPMScheduler

        self.learn_sigma = learn_sigma
        self.clip_sample = clip_sample
        self.scheduler = DDPMScheduler(
            num_train_timesteps=num_train_timesteps,
            beta_start=beta_start,
            beta_end=beta_end,
            beta_schedule=beta_schedule,
            variance_type="learned_range" if learn_sigma else "fixed_large",
            clip_sample=clip_sample,
            timestep_spacing="linspace",
            prediction_type="epsilon",
        )
        self.num_timesteps = num_train_timesteps
        # DiT's posterior quantities, in float64 from the scheduler's betas
        betas = self.scheduler.betas.double()
        alphas = 1.0 - betas
        ac = torch.cumprod(alphas, 0)
        ac_prev = torch.cat([ac.new_ones(1), ac[:-1]])
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
        self._table = {
            "log_betas": torch.log(betas),
            # the posterior variance is 0 at t = 0: clip its log to the t = 1 value (as DiT)
            "post_log_var": torch.log(torch.cat([post_var[1:2], post_var[1:]])),
            "post_coef1": betas * torch.sqrt(ac_prev) / (1.0 - ac),
            "post_coef2": (1.0 - ac_prev) * torch.sqrt(alphas) / (1.0 - ac),
            "sqrt_recip_ac": torch.sqrt(1.0 / ac),
            "sqrt_recipm1_ac": torch.sqrt(1.0 / ac - 1.0),
        }

    def config(self) -> dict:
        """The training ``DDPMScheduler``'s config: what a checkpoint stores as "objective"."""
        return dict(self.scheduler.config)

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "Diffusion":
        """The inverse of :meth:`config`."""
        return cls(
            num_train_timesteps=int(config["num_train_timesteps"]),
            beta_schedule=config["beta_schedule"],
            beta_start=float(config["beta_start"]),
            beta_end=float(config["beta_end"]),
            learn_sigma=config["variance_type"] == "learned_range",
            clip_sample=bool(config["clip_sample"]),
        )

    def _extract(self, name: str, t: torch.Tensor, ndim: int) -> torch.Tensor:
        v = self._table[name].to(t.device)[t].float()
        return v.view(-1, *([1] * (ndim - 1)))

    def sample_timesteps(self, n: int, device) -> torch.Tensor:
        return torch.randint(0, self.num_timesteps, (n,), device=device)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.scheduler.add_noise(x0, noise, t)

    def training_losses(
        self, model_output: torch.Tensor, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> Dict[str, torch.Tensor]:
        """Per-sample losses {"loss", "mse", "vb"} (each (B,)) from the model's raw output."""
        C = x_start.shape[1]
        out = model_output.float()
        eps = out[:, :C]
        mse = _mean_flat((noise.float() - eps) ** 2)
        if not self.learn_sigma:
            return {"loss": mse, "mse": mse, "vb": torch.zeros_like(mse)}
        if out.shape[1] != 2 * C:
            raise ValueError(f"learned sigma needs {2 * C} output channels, got {out.shape[1]}")
        vb = self.vb_terms_bpd(eps.detach(), out[:, C:], x_start.float(), x_t.float(), t)
        return {"loss": mse + vb, "mse": mse, "vb": vb}

    def vb_terms_bpd(self, eps, var_values, x_start, x_t, t) -> torch.Tensor:
        """DiT's ``_vb_terms_bpd`` with ``clip_denoised=False``: (B,) bits per dimension."""
        n = x_start.dim()
        min_log = self._extract("post_log_var", t, n)
        max_log = self._extract("log_betas", t, n)
        frac = (var_values + 1) / 2
        model_log_var = frac * max_log + (1 - frac) * min_log
        c1, c2 = self._extract("post_coef1", t, n), self._extract("post_coef2", t, n)
        pred_x0 = self._extract("sqrt_recip_ac", t, n) * x_t - self._extract("sqrt_recipm1_ac", t, n) * eps
        model_mean = c1 * pred_x0 + c2 * x_t
        true_mean = c1 * x_start + c2 * x_t
        kl = _mean_flat(normal_kl(true_mean, min_log, model_mean, model_log_var)) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x_start, model_mean, 0.5 * model_log_var)
        nll = _mean_flat(nll) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def make_sampler(self, name: str = "ddpm", steps: int = 250):
        """A diffusers scheduler for ``steps`` sampling steps: "ddpm" (respaced) or "ddim" (eta 0)."""
        from diffusers import DDIMScheduler, DDPMScheduler

        if steps < 1 or steps > self.num_timesteps:
            raise ValueError(f"sampling steps must be in [1, {self.num_timesteps}], got {steps}")
        if name == "ddpm":
            sched = DDPMScheduler.from_config(self.scheduler.config, timestep_spacing="linspace")
        elif name == "ddim":
            sched = DDIMScheduler.from_config(
                self.scheduler.config, timestep_spacing="trailing", set_alpha_to_one=True, steps_offset=0
            )
        else:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {name!r}")
        sched.set_timesteps(steps)
        return sched

    @torch.no_grad()
    def sample(
        self,
        model,
        labels: torch.Tensor,
        shape,
        *,
        sampler: str = "ddpm",
        steps: int = 250,
        cfg_scale: float = 1.0,
        cfg_interval: Interval = None,
        generator: Optional[torch.Generator] = None,
        autocast_dtype: Optional[torch.dtype] = None,
        on_step: Optional[Callable[[], Any]] = None,
        guided_channels: Optional[int] = None,
    ) -> torch.Tensor:
        """Draw ``len(labels)`` samples of ``shape`` (C, H, W) from ``model`` (in eval mode).

        With ``cfg_scale != 1`` the batch is doubled with the null label (``model.num_classes``)
        and ``model.forward_with_cfg`` guides the first ``guided_channels`` eps channels (None: all),
        at the steps whose noise level lies in ``cfg_interval`` (lo, hi] in ``t / T`` or in
        σ = sqrt((1 - ᾱ_t) / ᾱ_t) (None: every step; see ``xswin_fast.objectives.guidance``).
        ``on_step`` is called after every denoising step (progress reports).
        """
        interval = check_guidance(model, cfg_scale, cfg_interval)
        device = labels.device
        B = labels.shape[0]
        C = shape[0]
        sched = self.make_sampler(sampler, steps)
        x = torch.randn((B, *shape), generator=generator, device=generator.device if generator else device)
        x = x.to(device)
        for t in sched.timesteps:
            tt = torch.full((B,), int(t), device=device, dtype=torch.long)
            sigma = float(self._table["sqrt_recipm1_ac"][int(t)])
            guided = guided_at(int(t) / self.num_timesteps, cfg_scale, interval, sigma)
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                out = model_output(model, x, tt, labels, cfg_scale, guided, guided_channels)
            out = out.float()
            if sampler == "ddim" or not self.learn_sigma:
                out = out[:, :C]
            x = self.step(sched, out, t, x, generator)
            if on_step is not None:
                on_step()
        return x

    def step(self, sched, model_output: torch.Tensor, t: int, x: torch.Tensor,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """One sampler step of ``sched`` (from :meth:`make_sampler`): x_t (B, C, H, W) -> x_{t-1}.

        DDPM's posterior mean is built from the (clipped) x0 alone. DDIM's update
        ``sqrt(a_prev) * x0 + sqrt(1 - a_prev) * eps`` also needs eps: with clipping on, eps is
        re-derived from the clipped x0, ``(x_t - sqrt(a_t) * x0) / sqrt(1 - a_t)``. The model's own
        eps would contradict the clipped x0 and push the samples off the data (ADM, DiT).
        """
        from diffusers import DDIMScheduler

        if isinstance(sched, DDIMScheduler):
            return sched.step(model_output, t, x, eta=0.0, use_clipped_model_output=self.clip_sample,
                              generator=generator).prev_sample
        return sched.step(model_output, t, x, generator=generator).prev_sample
