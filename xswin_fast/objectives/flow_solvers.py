"""SiT's two headline samplers of a flow model, in this project's time (t = 1 pure noise, t = 0 data).

Both take ``velocity(x, t) -> v``, the model's velocity dx_t/dt of the interpolant
``x_t = (1 - t) x_0 + t eps`` at a float time t in [0, 1] (guidance already applied), and integrate
from x at t = 1 to t = 0. SiT (Ma et al. 2024, code: github willisma/SiT, ``transport/``) runs
time the other way, tau = 1 - t with ``x_tau = tau x_1 + (1 - tau) x_0`` (x_1 data, x_0 noise), so
its velocity is ``-v`` and its step sizes are ours.

* :func:`euler_maruyama`, SiT's ``sample_sde`` defaults: the reverse SDE
  ``dx = [-v + w(t) score] dh + sqrt(2 w(t)) dW`` in the integration variable h = 1 - t, with the
  score of the linear interpolant from the velocity, ``score = -((1 - t) v + x) / t``, and the
  diffusion coefficient w ("sigma": w = t, SiT's default; "constant", "linear", "decreasing",
  "increasing-decreasing": SiT's other forms). ``steps`` model calls: ``steps - 1``
  Euler–Maruyama steps over a grid evenly spaced from t = 1 to t = ``last_step_size`` (0.04, the
  stride of 250 steps over [0, 1]), then SiT's "Mean" last step ``x + drift * last_step_size``
  without noise, to t = 0. SiT's FIDs use 250 steps.
* :func:`dopri5`, SiT's ``sample_ode`` default: the Dormand–Prince 5(4) pair with adaptive steps,
  error per step ``rms(err / (atol + rtol * max(|x|, |x_new|)))`` over the whole batch (one step
  size for the batch, as SiT's solver integrates the batch as one state), atol 1e-6 and rtol 1e-3,
  first step chosen by Hairer's rule, step factor ``0.9 * ratio^(-1/5)`` within [0.2, 10], no
  growth after a rejected step.

A ``time_shift`` s != 1 maps the Euler–Maruyama grid through SD3's shift, as the other samplers
do; s = 1 is SiT's grid exactly.
"""
import math
from typing import Callable, Optional

import torch

Velocity = Callable[[torch.Tensor, float], torch.Tensor]

SDE_DIFFUSION_FORMS = ("sigma", "constant", "linear", "decreasing", "increasing-decreasing")
SDE_LAST_STEP_SIZE = 0.04
DOPRI5_ATOL, DOPRI5_RTOL = 1e-6, 1e-3

# Dormand & Prince (1980): nodes c, stages a, 5th-order weights b (the 7th stage is the next step's first)
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
# the 5th-order weights minus the embedded 4th-order ones: the local error estimate
_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)


def diffusion_coefficient(form: str, t: float, norm: float = 1.0) -> float:
    """SiT's ``compute_diffusion`` of the linear path at our time t (its tau = 1 - t)."""
    tau = 1.0 - t
    if form in ("sigma", "linear"):
        return norm * t
    if form == "constant":
        return norm
    if form == "decreasing":
        return 0.25 * (norm * math.cos(math.pi * tau) + 1) ** 2
    if form == "increasing-decreasing":
        return norm * math.sin(math.pi * tau) ** 2
    raise ValueError(f"diffusion_form must be one of {SDE_DIFFUSION_FORMS}, got {form!r}")


def score_from_velocity(v: torch.Tensor, x: torch.Tensor, t: float) -> torch.Tensor:
    """grad log p_t(x) of the linear interpolant from its velocity (t > 0): ``-((1 - t) v + x) / t``."""
    return -((1 - t) * v + x) / t


@torch.no_grad()
def euler_maruyama(
    velocity: Velocity,
    x: torch.Tensor,
    steps: int,
    *,
    generator: Optional[torch.Generator] = None,
    diffusion_form: str = "sigma",
    diffusion_norm: float = 1.0,
    last_step_size: float = SDE_LAST_STEP_SIZE,
    grid: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    on_step: Optional[Callable[[], object]] = None,
) -> torch.Tensor:
    """SiT's SDE sampler from noise ``x`` (B, ...) float32: ``steps`` >= 2 model calls (see the module
    docstring). ``grid`` maps the evenly spaced times (1 .. ``last_step_size``) to the ones used (the
    time shift); the noise of each step is drawn from ``generator`` before its model call."""
    if steps < 2:
        raise ValueError(f"the SDE sampler needs at least 2 steps (one Euler–Maruyama step and the last), got {steps}")
    if not 0 < last_step_size < 1:
        raise ValueError(f"last_step_size must be in (0, 1), got {last_step_size}")
    diffusion_coefficient(diffusion_form, 1.0, diffusion_norm)
    times = torch.linspace(1.0, last_step_size, steps, dtype=torch.float64)
    times = (grid(times) if grid is not None else times).tolist()

    def drift(x, t):
        v = velocity(x, t)
        return -v + diffusion_coefficient(diffusion_form, t, diffusion_norm) * score_from_velocity(v, x, t)

    for t, t_next in zip(times[:-1], times[1:]):
        h = t - t_next
        dw = torch.randn(x.shape, generator=generator, device=generator.device if generator else x.device).to(x) * math.sqrt(h)
        w = diffusion_coefficient(diffusion_form, t, diffusion_norm)
        x = x + drift(x, t) * h + math.sqrt(2 * w) * dw
        if on_step is not None:
            on_step()
    x = x + drift(x, times[-1]) * times[-1]
    if on_step is not None:
        on_step()
    return x


def _rms(x: torch.Tensor) -> float:
    return x.pow(2).mean().sqrt().item()


def _initial_step(velocity: Velocity, x: torch.Tensor, f0: torch.Tensor, atol: float, rtol: float) -> float:
    """Hairer, Nørsett & Wanner (1993), II.4: a first step whose Euler error is about the tolerance."""
    scale = atol + rtol * x.abs()
    d0, d1 = _rms(x / scale), _rms(f0 / scale)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h0 = min(h0, 1.0)
    f1 = velocity(x - h0 * f0, 1.0 - h0)
    d2 = _rms((f1 - f0) / scale) / h0
    h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** (1 / 5)
    return min(100 * h0, h1, 1.0)


@torch.no_grad()
def dopri5(
    velocity: Velocity,
    x: torch.Tensor,
    *,
    atol: float = DOPRI5_ATOL,
    rtol: float = DOPRI5_RTOL,
    max_steps: int = 10_000,
    on_step: Optional[Callable[[], object]] = None,
) -> torch.Tensor:
    """Integrate dx/dt = v from t = 1 (``x``, (B, ...) float32) to t = 0 with adaptive Dormand–Prince
    5(4) steps (see the module docstring). ``atol`` and ``rtol`` (floats) must be finite and > 0.
    ``on_step`` is called once per accepted step. RuntimeError if ``max_steps`` attempts do not
    reach t = 0."""
    for name, tol in (("atol", atol), ("rtol", rtol)):
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (0 < tol < math.inf):
            raise ValueError(f"{name} must be a finite float > 0, got {tol!r}")
    t = 1.0
    k1 = velocity(x, t)
    h = _initial_step(velocity, x, k1, atol, rtol)
    for _ in range(max_steps):
        h = min(h, t)
        ks = [k1]
        for c, a in zip(_C[1:], _A[1:]):
            xi = x - h * sum(ai * k for ai, k in zip(a, ks) if ai != 0.0)
            ks.append(velocity(xi, max(t - c * h, 0.0)))
        x_new = xi  # the 7th stage is evaluated at the 5th-order solution
        err = h * sum(e * k for e, k in zip(_E, ks) if e != 0.0)
        ratio = _rms(err / (atol + rtol * torch.maximum(x.abs(), x_new.abs())))
        if not math.isfinite(ratio):
            raise RuntimeError(f"dopri5: the velocity is not finite at t = {t:.4g}")
        accepted = ratio <= 1.0
        if accepted:
            t, x, k1 = t - h, x_new, ks[-1]
            if on_step is not None:
                on_step()
            if t <= 0.0:
                return x
        factor = 10.0 if ratio == 0 else min(10.0, max(0.2, 0.9 * ratio ** (-1 / 5)))
        h = h * (factor if accepted else min(factor, 1.0))
    raise RuntimeError(f"dopri5 did not reach t = 0 in {max_steps} steps (stopped at t = {t:.4g})")
