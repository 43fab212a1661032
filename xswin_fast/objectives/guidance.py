"""Classifier-free guidance with an optional guidance interval, shared by every objective's sampler,
for class labels and for text (:class:`TextCondition`: prompts, and a negative prompt or the null
caption as the unconditional half).

Guidance is applied only at the noise levels inside an interval (Kynkäänniemi et al. 2024,
"Applying guidance in a limited interval"), half-open ``(lo, hi]`` as in the paper; elsewhere the
model runs once, conditionally, on the undoubled batch. The interval is given in one of two units:

* ``"t"`` (a plain ``(lo, hi)`` tuple): the model's timestep divided by the number of training
  timesteps, in [0, 1] for both objectives: ``t / T`` for an eps model's integer step t of T
  (999 of 1000 -> 0.999), the interpolation time t itself for a flow model (1 = pure noise, 0 = data);
* ``"sigma"`` (:class:`GuidanceInterval`): the paper's noise level σ, the noise-to-signal ratio of
  x_t = a x_0 + b eps, σ = b / a: ``σ = t / (1 - t)`` for flow (inf at t = 1), and
  ``σ = sqrt((1 - ᾱ_t) / ᾱ_t)`` for eps (the EDM σ of a DDPM step). The paper's interval for
  EDM2 on ImageNet-512 is σ in (0.28, 5.42]; in flow time that is t in (0.219, 0.844].
"""
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch

from ..text.embeddings import TextEmbeddings

UNITS = ("t", "sigma")


@dataclass(frozen=True)
class GuidanceInterval:
    """Guide at the noise levels in (lo, hi] of ``unit`` "t" or "sigma" (see the module docstring)."""

    lo: float
    hi: float
    unit: str = "t"

    def contains(self, level: float, sigma: float) -> bool:
        x = level if self.unit == "t" else sigma
        return self.lo < x <= self.hi


Interval = Optional[Union[Tuple[float, float], GuidanceInterval]]


def as_interval(interval: Interval) -> Optional[GuidanceInterval]:
    """``interval`` as a :class:`GuidanceInterval` (a tuple is in t), checked: ValueError unless
    0 <= lo < hi, finite, and hi <= 1 in t (lo = hi would guide no step)."""
    if interval is None:
        return None
    if not isinstance(interval, GuidanceInterval):
        if len(interval) != 2:
            raise ValueError(f"cfg_interval must be (lo, hi), got {tuple(interval)}")
        interval = GuidanceInterval(float(interval[0]), float(interval[1]))
    lo, hi, unit = interval.lo, interval.hi, interval.unit
    if unit not in UNITS:
        raise ValueError(f"cfg_interval's unit must be one of {UNITS}, got {unit!r}")
    top = 1 if unit == "t" else math.inf
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo < hi <= top):
        raise ValueError(f"cfg_interval must be (lo, hi] with 0 <= lo < hi{' <= 1' if unit == 't' else ''} "
                         f"in {unit} (an empty interval guides no step), got ({lo}, {hi}]")
    return interval


@dataclass
class TextCondition:
    """What a text model samples from: ``prompts`` (B rows of :class:`TextEmbeddings`) and the
    unconditional half of guidance, ``negative`` (B rows: the negative prompt's embeddings) or
    None (the null caption, a mask row that keeps no token). ``shape`` and ``device`` are those of
    a (B,) labels tensor, so the objectives' samplers take either."""

    prompts: TextEmbeddings
    negative: Optional[TextEmbeddings] = None

    def __post_init__(self):
        if self.negative is not None and len(self.negative) != len(self.prompts):
            raise ValueError(f"negative must hold one row per prompt ({len(self.prompts)}), got {len(self.negative)}")

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: slice) -> "TextCondition":
        return TextCondition(self.prompts[index], None if self.negative is None else self.negative[index])

    @property
    def shape(self) -> Tuple[int]:
        return (len(self.prompts),)

    @property
    def device(self) -> torch.device:
        return self.prompts.device

    def unconditional(self) -> TextEmbeddings:
        """The unconditional half: the negative prompts, or null captions."""
        if self.negative is not None:
            return self.negative
        p = self.prompts
        return TextEmbeddings.null(len(p), p.dim, 1, p.hidden.dtype, p.device)


def encode_prompts(encoder, prompts: Sequence[str], negative_prompt: Union[None, str, Sequence[str]] = None,
                   device: Optional[torch.device] = None) -> TextCondition:
    """The :class:`TextCondition` of ``prompts`` (str each) by ``encoder`` (a
    ``xswin_fast.text.TextEncoder``), in float32 on ``device``; ``negative_prompt``: one str for
    every prompt, one per prompt, or None (guidance against the null caption)."""
    n = len(prompts)
    emb = encoder.encode(list(prompts)).to(device, torch.float32)
    if negative_prompt is None:
        return TextCondition(emb)
    negatives = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
    if len(negatives) not in (1, n):
        raise ValueError(f"negative_prompt must be one str or one per prompt ({n}), got {len(negatives)}")
    neg = encoder.encode(negatives).to(device, torch.float32)
    return TextCondition(emb, neg[[0] * n] if len(negatives) == 1 else neg)


def conditions_text(model) -> bool:
    """Whether ``model`` is a text model (built with ``text_dim`` > 0)."""
    return getattr(model, "text_dim", 0) > 0


def check_guidance(model, cfg_scale: float, interval: Interval) -> Optional[GuidanceInterval]:
    """ValueError for a guidance that cannot run: a non-finite ``cfg_scale``, guidance of a class
    model without a null class, or a bad ``interval`` (see :func:`as_interval`); returns the
    interval. A text model always has its null caption (learned as well as caption dropout
    trained it: train.py refuses grids with guidance when --caption-dropout is 0)."""
    if not math.isfinite(cfg_scale):
        raise ValueError(f"cfg_scale must be a finite number, got {cfg_scale}")
    if cfg_scale != 1.0 and not conditions_text(model) and getattr(getattr(model, "y_embedder", None), "dropout_prob", 0) <= 0:
        raise ValueError("classifier-free guidance needs a model trained with class dropout (a null class)")
    return as_interval(interval)


def guided_at(level: float, cfg_scale: float, interval: Optional[GuidanceInterval], sigma: float = math.nan) -> bool:
    """Whether the step at noise ``level`` (t in [0, 1]) and ``sigma`` is guided: ``cfg_scale != 1``
    and the level inside the half-open ``interval`` (None: every level)."""
    return cfg_scale != 1.0 and (interval is None or interval.contains(level, sigma))


def model_output(model, x: torch.Tensor, t: torch.Tensor, labels: Union[torch.Tensor, TextCondition], cfg_scale: float,
                 guided: bool, guided_channels: Optional[int] = None) -> torch.Tensor:
    """The model's output (B, out_channels, H, W) for x (B, C, H, W), timesteps t (B,) and integer
    labels (B,) or a :class:`TextCondition` of B prompts: guided with ``cfg_scale`` through
    ``model.forward_with_cfg`` (the batch doubled with the null label ``model.num_classes``, or
    with the condition's unconditional half; the first ``guided_channels`` channels guided, None:
    all) when ``guided``, a plain conditional call otherwise."""
    if isinstance(labels, TextCondition):
        return _text_output(model, x, t, labels, cfg_scale, guided, guided_channels)
    if not guided:
        return model(x, t, labels)
    null = torch.full_like(labels, model.num_classes)
    args = (torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]), cfg_scale)
    out = model.forward_with_cfg(*args) if guided_channels is None else model.forward_with_cfg(*args, guided_channels)
    return out[: x.shape[0]]


def _text_output(model, x, t, cond: TextCondition, cfg_scale, guided, guided_channels) -> torch.Tensor:
    if not guided:
        return model(x, t, **cond.prompts.model_kwargs())
    text = TextEmbeddings.cat([cond.prompts, cond.unconditional()]).model_kwargs()
    out = model.forward_with_cfg(torch.cat([x, x]), torch.cat([t, t]), None, cfg_scale, guided_channels, **text)
    return out[: x.shape[0]]
