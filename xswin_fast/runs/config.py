"""The typed configuration of a train.py run: every setting, its default, its help and its flag.

:class:`TrainConfig` is the one place where a setting is declared. Each field's metadata holds
its help text and, where the two differ, the default of a ``--data`` run (DiT's recipe: AdamW
1e-4, batch 256, EMA 0.9999, the SD VAE) next to the field default, which is the built-in digits
job's (it must finish in minutes on a CPU). :func:`build_parser` generates train.py's flags from
the fields; ``config.json`` and a checkpoint's "args" are :meth:`TrainConfig.to_dict`, read back
with :meth:`TrainConfig.from_dict`.
"""
import argparse
import json
import logging
import math
import os
import sys
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Union

from ..checkpoints import plain_data
from ..data.fashion_mnist import DEFAULT_ROOT as FASHION_MNIST_ROOT
from ..data.fashion_mnist import DEFAULT_SIZE as FASHION_MNIST_SIZE
from ..diffusion import PRECISIONS, SAMPLERS
from ..flow import FLOW_SAMPLERS, T_SAMPLINGS
from ..models import list_models
from ..objectives import ALL_SAMPLERS, OBJECTIVES
from ..sampling import DEFAULT_CFG_SCALE

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "triton")
FASHION_MNIST = "fashion-mnist"  # --data: the IDX reader, pixel space like the digits, 32 px
_SAME = object()  # a --data run keeps the digits default


class ConfigError(ValueError):
    """A setting that cannot work: a bad value, or one at odds with another setting or the data."""


def _vae_spec(value: str) -> Optional[str]:
    return None if value.lower() == "none" else value


def _json_object(value: str) -> Dict[str, Any]:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}")
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return parsed


def parse_threads(value: str) -> Union[int, str]:
    """--threads: an integer >= 0 or "auto" (argparse type)."""
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer or 'auto', got {value!r}")
    if n < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return n


def parse_time_shift(value: str) -> Union[float, str]:
    """--time-shift: a finite number > 0 or "auto" (argparse type)."""
    if value == "auto":
        return value
    try:
        shift = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0 or 'auto', got {value!r}")
    if not (math.isfinite(shift) and shift > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0 or 'auto', got {value!r}")
    return shift


class Range:
    """The finite numbers from ``low`` to ``high`` (None: unbounded); ``open_low`` / ``open_high``
    exclude an end. A setting's valid values (None, for an optional setting, passes)."""

    def __init__(self, low=None, high=None, open_low: bool = False, open_high: bool = False):
        self.low, self.high, self.open_low, self.open_high = low, high, open_low, open_high

    def __contains__(self, value) -> bool:
        if value is None:
            return True
        if not math.isfinite(value):
            return False
        above = self.low is None or (value > self.low if self.open_low else value >= self.low)
        below = self.high is None or (value < self.high if self.open_high else value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.open_low else '>='} {self.low}"
        return f"in {'(' if self.open_low else '['}{self.low}, {self.high}{')' if self.open_high else ']'}"


def setting(default, help: str, *, data=_SAME, choices: Optional[Iterable] = None, parse: Optional[Callable] = None,
            metavar: Optional[str] = None, valid: Optional[Range] = None):
    """A :class:`TrainConfig` field: ``default`` (digits job), ``data`` (a --data run's default, if
    different), the flag's ``help``, ``choices``, ``parse`` (str -> value), ``metavar`` and the
    ``valid`` range of a number."""
    meta = dict(help=help, data=data, choices=tuple(choices) if choices else None, parse=parse, metavar=metavar,
                valid=valid)
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Every setting of a train.py run (flag ``--image-size`` is field ``image_size``)."""

    data: Optional[str] = setting(
        None, f"ImageFolder root (one subfolder per class), or {FASHION_MNIST!r} (its IDX files, see --data-dir); "
        "default: sklearn's digits (built in)"
    )
    data_dir: Optional[str] = setting(None, f"folder of the Fashion-MNIST IDX files; default {FASHION_MNIST_ROOT}")
    split_seed: Optional[int] = setting(None, "seed of the stratified held-out split; default --global-seed")
    image_size: int = setting(8, "training resolution in pixels (resize + center crop)", data=256, valid=Range(1))
    eval_fraction: float = setting(
        0.2, "stratified held-out fraction for evaluate.py", data=0.0, valid=Range(0, 1, open_high=True)
    )
    hflip: bool = setting(False, "random horizontal flips", data=True)
    num_workers: int = setting(0, "data-loader workers per process", data=4, valid=Range(0))
    vae: Optional[str] = setting(
        None, '"none" (pixel space), a local AutoencoderKL dir, a hub id, or "ema"/"mse" (stabilityai/sd-vae-ft-*)',
        data="ema", parse=_vae_spec,
    )
    vae_subfolder: Optional[str] = setting(None, "subfolder of --vae holding the VAE (e.g. 'vae' in a pipeline repo)")
    cache_latents: bool = setting(False, "encode the dataset once and train on cached posteriors")
    latent_cache_dir: Optional[str] = setting(
        None, "parent of the latent caches (one subfolder per data/VAE hash); default RESULTS_DIR/latent-cache"
    )
    model: str = setting("XSwin-digits", "backbone preset", data="XSwin-S/2", choices=list_models(), metavar="NAME")
    model_kwargs: Dict[str, Any] = setting(
        {}, 'JSON constructor overrides, e.g. \'{"embed_dim": 32, "depths": [1, 1]}\' (input size, channels and '
        "classes come from the data)", parse=_json_object, metavar="JSON",
    )
    backend: str = setting("auto", "op backend of the model", choices=BACKENDS)
    grad_checkpointing: bool = setting(False, "recompute blocks in backward")
    compile: bool = setting(False, "torch.compile the training model")
    diffusion_steps: int = setting(1000, "training timesteps T (linear betas 1e-4..0.02)", valid=Range(1))
    beta_schedule: str = setting("linear", "diffusers beta schedule", choices=("linear", "scaled_linear", "squaredcos_cap_v2"))
    objective: str = setting(
        "eps", "training objective: eps (DDPM noise prediction, DiT's hybrid loss) or flow (linear interpolant "
        "x_t = (1 - t) x_0 + t eps, velocity target; see docs/training.md)", choices=OBJECTIVES,
    )
    t_sampling: str = setting("uniform", "flow: training times uniform or logit-normal (SD3)", choices=T_SAMPLINGS)
    logit_mean: float = setting(0.0, "flow: mean m of the logit-normal t = sigmoid(m + s n)", valid=Range())
    logit_std: float = setting(1.0, "flow: std s of the logit-normal", valid=Range(0, open_low=True))
    time_shift: Union[float, str] = setting(
        1.0, "flow: SD3 time shift s of training and sampling, t' = s t / (1 + (s - 1) t): a number > 0 (1 = none) "
        "or auto (sqrt(C*H*W / 4096) of the latents)", parse=parse_time_shift,
    )
    global_batch_size: int = setting(64, "summed over all processes", data=256, valid=Range(1))
    lr: float = setting(2e-3, "AdamW learning rate", data=1e-4, valid=Range(0, open_low=True))
    weight_decay: float = setting(0.0, "AdamW weight decay (DiT: 0)", valid=Range(0))
    lr_warmup_steps: int = setting(100, "linear warm-up steps", data=0, valid=Range(0))
    lr_schedule: str = setting(
        "cosine", "after warm-up: constant (DiT) or cosine decay to 0 at --max-steps", data="constant",
        choices=("constant", "cosine"),
    )
    max_grad_norm: float = setting(1.0, "gradient clipping norm; 0 disables", valid=Range(0))
    epochs: int = setting(1000, "epoch limit", data=1400, valid=Range(1))
    max_steps: Optional[int] = setting(1500, "stop after this many optimizer steps", data=None, valid=Range(1))
    ema_decay: float = setting(0.9999, "EMA decay over parameters and buffers", valid=Range(0, 1))
    ema_warmup: bool = setting(True, "use min(decay, (1+step)/(10+step))", data=False)
    precision: str = setting("auto", "autocast; auto = bf16 on CUDA, fp32 on CPU", choices=PRECISIONS)
    tf32: bool = setting(True, "allow TF32 matmuls on Ampere+ GPUs")
    global_seed: int = setting(0, "seed of rank r is global_seed * world_size + r", valid=Range(0))
    threads: Union[int, str] = setting(
        "auto", "CPU threads per process: N, 0 (torch's default) or auto (torch's default on an idle machine, 1 "
        "when the load average shows other work)", data=0, parse=parse_threads,
    )
    device: str = setting("auto", "auto (cuda:LOCAL_RANK if available, else cpu), cpu, cuda, cuda:1, ...")
    results_dir: str = setting("results", "parent of numbered run directories")
    run_dir: Optional[str] = setting(None, "explicit run directory (default RESULTS_DIR/NNN-MODEL; on resume, the checkpoint's)")
    log_every: int = setting(100, "log (and flush losses.csv) every N steps", valid=Range(1))
    ckpt_every: int = setting(500, "checkpoint every N steps (and always at the end)", data=50_000, valid=Range(1))
    keep_last: int = setting(0, "keep only the newest N step checkpoints (0 = all)", valid=Range(0))
    sample_every: int = setting(500, "EMA sample grid every N steps (0 = only at the end)", data=10_000, valid=Range(0))
    sample_num: int = setting(100, "images per sample grid", data=16, valid=Range(1))
    sample_steps: int = setting(50, "sampler steps for grids (at most --diffusion-steps)", data=250, valid=Range(1))
    sample_sampler: Optional[str] = setting(
        None, "sampler of the grids: ddpm (respaced) or ddim for eps, euler or heun for flow; default ddpm / euler",
        choices=ALL_SAMPLERS,
    )
    sample_cfg: float = setting(
        DEFAULT_CFG_SCALE, "classifier-free guidance scale of grids (1 = off; the same default as sample.py and "
        "evaluate.py)", valid=Range(),
    )
    progress: Optional[bool] = setting(None, "tqdm progress bar on rank 0; default: when stderr is a terminal")
    resume: Optional[str] = setting(None, "checkpoint file, checkpoints dir or run dir: continue that run exactly")

    def __post_init__(self):
        for f in fields(self):
            value, valid = getattr(self, f.name), f.metadata["valid"]
            if valid is not None and (isinstance(value, bool) or value not in valid):
                kind = "a finite number " if _scalar_type(f) is float else ""
                raise ConfigError(f"{_flag(f.name)} must be {kind}{valid}, got {_show(value)}")
        if self.time_shift != "auto" and not (type(self.time_shift) in (int, float) and 0 < self.time_shift < math.inf):
            raise ConfigError(f"--time-shift must be a finite number > 0 or auto, got {_show(self.time_shift)}")
        allowed = FLOW_SAMPLERS if self.objective == "flow" else SAMPLERS
        if self.sample_sampler is not None and self.sample_sampler not in allowed:
            raise ConfigError(f"--sample-sampler {self.sample_sampler} does not fit --objective {self.objective}: "
                              f"use one of {', '.join(allowed)}")
        if self.sample_steps > self.diffusion_steps:
            raise ConfigError(f"--sample-steps must be at most --diffusion-steps {self.diffusion_steps}, got {self.sample_steps}")

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON data (what config.json and a checkpoint's "args" hold)."""
        return plain_data(asdict(self))

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "TrainConfig":
        """The inverse of :meth:`to_dict`; missing keys take the field defaults."""
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"unknown train.py settings {unknown}")
        return cls(**values)

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "TrainConfig":
        """A run's ``config.json``."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def save(self, path: Union[str, os.PathLike], **extra: Any) -> None:
        """Write ``config.json``; ``extra`` replaces fields (the trainer stores the resolved model_kwargs)."""
        Path(path).write_text(json.dumps({**self.to_dict(), **extra}, indent=2))


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _show(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def _help(f) -> str:
    meta = f.metadata
    text = meta["help"]
    if meta["metavar"] and meta["choices"]:
        text += f". One of: {', '.join(meta['choices'])}"
    default = f.default_factory() if f.default is MISSING else f.default
    if meta["data"] is not _SAME and meta["data"] != default:
        text += f"; default {_show(default)} (digits) / {_show(meta['data'])} (--data)"
    elif default is not None:
        text += f"; default {_show(default)}"
    return text.replace("%", "%%")


def _scalar_type(f) -> type:
    tp = f.type
    args = [a for a in getattr(tp, "__args__", ()) if a is not type(None)]
    return args[0] if args else tp


def build_parser(description: Optional[str] = None, parser_class=argparse.ArgumentParser) -> argparse.ArgumentParser:
    """train.py's argument parser, one flag per :class:`TrainConfig` field.

    Nothing has an argparse default: the parsed namespace holds exactly the flags that were
    typed, which is what both a new run (:func:`new_run_config`) and a resume
    (:func:`resume_config`) need.
    """
    p = parser_class(
        prog="train.py", description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    for f in fields(TrainConfig):
        meta, kind = f.metadata, _scalar_type(f)
        kw = dict(help=_help(f))
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = meta["parse"] or kind
            if meta["choices"]:
                kw["choices"] = meta["choices"]
            if meta["metavar"]:
                kw["metavar"] = meta["metavar"]
        p.add_argument(_flag(f.name), **kw)
    return p


def parse_flags(argv, description: Optional[str] = None, parser_class=argparse.ArgumentParser) -> Dict[str, Any]:
    """The flags typed in ``argv`` (a list of strings), as {field name: parsed value}; ``parser_class``
    is an ``argparse.ArgumentParser`` (sub)class."""
    return vars(build_parser(description, parser_class).parse_args(argv))


def defaults_for(data: Optional[str]) -> Dict[str, Any]:
    """Every field's default: the digits job's, or with ``data`` set a --data run's."""
    out = {}
    for f in fields(TrainConfig):
        default = f.default_factory() if f.default is MISSING else f.default
        out[f.name] = f.metadata["data"] if data and data != FASHION_MNIST and f.metadata["data"] is not _SAME else default
    if data == FASHION_MNIST:
        out["image_size"] = FASHION_MNIST_SIZE
    return out


def _absolute_paths(values: Dict[str, Any]) -> Dict[str, Any]:
    """``values`` with --data and a local --vae directory made absolute (the run may move)."""
    values = dict(values)
    for key in ("data", "data_dir"):
        if values.get(key) and values[key] != FASHION_MNIST:
            values[key] = os.path.abspath(os.path.expanduser(values[key]))
    if values.get("vae") and os.path.isdir(os.path.expanduser(values["vae"])):
        values["vae"] = os.path.abspath(os.path.expanduser(values["vae"]))
    return values


def new_run_config(flags: Dict[str, Any]) -> TrainConfig:
    """The config of a new run: the typed ``flags`` over the digits or --data defaults, paths made
    absolute, ``progress`` resolved, and the combinations that cannot work refused (ConfigError)."""
    values = _absolute_paths({**defaults_for(flags.get("data")), **flags})
    if values["progress"] is None:
        values["progress"] = sys.stderr.isatty()
    config = TrainConfig(**values)
    if config.cache_latents and not config.vae:
        raise ConfigError("--cache-latents needs a --vae")
    if config.data_dir and config.data != FASHION_MNIST:
        raise ConfigError(f"--data-dir is the folder of --data {FASHION_MNIST}'s files; pass --data {FASHION_MNIST} with it")
    if (not config.data or config.data == FASHION_MNIST) and config.vae:
        raise ConfigError("the built-in digits and Fashion-MNIST are 1-channel images: train them in pixel space (--vae none)")
    return config


# settings a resumed run may change without breaking the exact continuation
RESUME_SAFE = {
    "resume", "max_steps", "epochs", "log_every", "ckpt_every", "keep_last", "sample_every", "sample_num",
    "sample_steps", "sample_sampler", "sample_cfg", "progress", "num_workers", "run_dir", "results_dir",
    "compile", "backend", "grad_checkpointing",
}
# settings that define the model, its data or its noise schedule: a resume cannot change them
# (the weights would not fit, or the held-out split would leak into training)
RESUME_FIXED = (
    "model", "model_kwargs", "data", "data_dir", "split_seed", "image_size", "eval_fraction", "vae", "vae_subfolder", "diffusion_steps",
    "beta_schedule", "global_seed", "objective",
)


def resume_config(saved: Dict[str, Any], flags: Dict[str, Any], checkpoint: Path) -> TrainConfig:
    """The config of a run resumed from ``checkpoint``: its saved settings (the checkpoint's
    "args"), overridden by the ``flags`` typed next to ``--resume``.

    Every typed setting is applied (the trainer puts --lr and --weight-decay into the loaded
    optimizer). One of :data:`RESUME_FIXED` that differs from the saved value is refused with
    :class:`ConfigError`; any other change outside :data:`RESUME_SAFE` logs a warning. The run
    stays in the checkpoint's directory unless ``--run-dir`` is typed.
    """
    overrides = _absolute_paths({k: v for k, v in flags.items() if k != "resume"})
    # a setting newer than the checkpoint was trained at its field default (e.g. objective "eps")
    saved = {**{f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}, **saved}
    for name in RESUME_FIXED:
        if name in overrides and overrides[name] != saved.get(name):
            raise ConfigError(
                f"cannot resume with {_flag(name)} {_show(overrides[name])}: the checkpoint was trained with "
                f"{_show(saved.get(name))}, and {_flag(name)} defines the model or its data (start a new run instead)"
            )
    changed = {k: (saved.get(k), v) for k, v in overrides.items() if saved.get(k) != v and k not in RESUME_SAFE}
    if changed:
        shown = ", ".join(f"{_flag(k)} {_show(old)} -> {_show(new)}" for k, (old, new) in sorted(changed.items()))
        logger.warning("resuming with changed %s (%s): applied, so the run will not continue exactly as it would have",
                       sorted(changed), shown)
    values = {**saved, **overrides, "resume": str(checkpoint)}
    if "run_dir" not in overrides:  # continue where the checkpoint is, even if the run was moved
        values["run_dir"] = None
    return TrainConfig.from_dict(values)
