"""What the backbone experiments share (table1_digits.py, compare_backbones.py): argument types,
the recipe guard of an experiment folder, training a cell's run folder to a step with the
trainer's exact resume, label drawing, and the machine and commit a result came from."""
import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from torch.utils.data import Dataset

from xswin_fast.checkpoints import list_checkpoints, load_newest_checkpoint
from xswin_fast.cli.user_errors import finite_float
from xswin_fast.evaluation.metrics import TensorImageDataset, compute_metrics
from xswin_fast.models import create_model, list_models
from xswin_fast.objectives import autocast_dtype, generate
from xswin_fast.runs.config import ConfigError, new_run_config, op_backend, resume_config
from xswin_fast.runs.launch import train
from xswin_fast.runs.run_dir import load_run

SAMPLE_BATCH = 256  # evaluate.py's default: the same seed and batch give the same images
METRIC_NAMES = ("fid", "isc_mean", "kid_mean", "precision", "recall")


def model_list(value: str) -> List[str]:
    """--models: comma-separated registry names, each once (argparse type)."""
    names = [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in list_models()]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown model {', '.join(unknown) or repr(value)}; "
                                         f"available: {', '.join(list_models())}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"a model is named twice in {value!r}")
    return names


def cfg_list(value: str) -> List[float]:
    """--cfg-sweep: comma-separated guidance scales >= 1, sorted and deduplicated (argparse type)."""
    scales = [finite_float(s) for s in value.split(",") if s.strip()]
    if not scales or any(s < 1 for s in scales):
        raise argparse.ArgumentTypeError(f"expected comma-separated guidance scales >= 1, got {value!r}")
    return sorted(set(scales))


def check_recipe(folder: Path, recipe: Dict[str, Any]) -> None:
    """Record ``recipe`` in ``folder``/recipe.json, or refuse (ConfigError) a folder whose cells
    were made with another."""
    path = folder / "recipe.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        changed = sorted(k for k in set(saved) | set(recipe) if saved.get(k) != recipe.get(k))
        if changed:
            shown = ", ".join(f"{k} {saved.get(k)} -> {recipe.get(k)}" for k in changed)
            raise ConfigError(f"{folder} holds cells of another recipe ({shown}): pass the same flags, or another --out")
        return
    folder.mkdir(parents=True, exist_ok=True)
    write_json(path, recipe)


def check_folders(args, *flags: str) -> None:
    """ConfigError if a folder flag (``--out``, ``--results``) names an existing file."""
    for flag in flags:
        path = Path(getattr(args, flag))
        if path.exists() and not path.is_dir():
            raise ConfigError(f"--{flag} {path} is a file, not a folder")


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as JSON to ``path`` atomically (a reader sees the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=2))
    os.replace(tmp, path)


def count_parameters(name: str, kwargs: Dict[str, Any]) -> int:
    """Trainable parameters of model ``name`` built with ``kwargs``; ConfigError if it cannot be built."""
    try:
        model = create_model(name, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"--models {name} cannot be built with {kwargs}: {exc}") from exc
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def trained_step(run: Path) -> int:
    """The step of the run's newest checkpoint (0 without one)."""
    if not list_checkpoints(run / "checkpoints"):
        return 0
    return int(load_newest_checkpoint(run)[1]["step"])


def train_to(run: Path, step: int, new_config: Dict[str, Any], ops: Dict[str, Any], prog: str) -> Optional[Dict[str, Any]]:
    """Train the run folder ``run`` to ``step``, resuming its newest checkpoint (``new_config``:
    the train.py settings of a new run; ``ops``: settings a resume may change, max_steps set
    here). Returns the session's record (start and end step, seconds, load average), None if
    there was nothing to train. SystemExit if training fails or stops early (a signal)."""
    start = trained_step(run)
    if start >= step:
        return None
    ops = dict(ops, max_steps=step)
    if start:
        path, ckpt = load_newest_checkpoint(run)
        config, resume = resume_config(ckpt["args"], ops, path), ckpt
    else:
        config, resume = new_run_config(dict(new_config, **ops, run_dir=str(run))), None
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    began = time.perf_counter()
    status = train(config, resume)
    seconds = time.perf_counter() - began
    end = trained_step(run)
    if status != 0:  # a non-finite loss or weights: resuming would only repeat it
        raise SystemExit(f"{prog}: {run.name} failed at step {end} of {step} (status {status}): see {run / 'log.txt'}")
    if end < step:  # SIGINT or SIGTERM: the trainer saved a checkpoint
        raise SystemExit(f"{prog}: {run.name} stopped at step {end} of {step}; run the same command again to resume it")
    return dict(start=start, end=end, seconds=seconds, load_average=load)


def draw_labels(labels: Sequence[int], n: int, seed: int) -> List[int]:
    """``n`` labels in the proportions of ``labels``, shuffled: evaluate.py's drawing."""
    rng = np.random.default_rng(seed)
    return [labels[i] for i in rng.permutation(np.resize(np.arange(len(labels)), n))]


def machine_description(device: str) -> str:
    """The device a cell ran on, in words: the GPU's name, or the CPU model, cores and torch threads."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    name = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:  # not Linux
        pass
    return f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def git_commit() -> str:
    """The short commit of this clone (``unknown`` outside git)."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):  # no git, or not a clone
        return "unknown"
    return head.stdout.strip()



class Scorer:
    """Samples from one checkpoint's EMA model and scores them with an offline feature extractor.

    ``ckpt`` (Path): a run folder (its newest checkpoint) or a checkpoint file; ``device`` (str);
    ``backend`` (str): "auto", "torch" or "triton"; ``sampler`` (str or None: the objective's);
    ``steps`` (int): sampler steps; ``extractor`` (str): compute_metrics' feature extractor
    ("digits", "fashion"); ``weights`` (path or None): its weights (None: the cache).
    """

    def __init__(self, ckpt: Path, device: str, backend: str, sampler: Optional[str], steps: int, extractor: str,
                 weights: Optional[str] = None):
        self.run = load_run(str(ckpt), device, backend=op_backend(backend))
        self.sampler, self.steps = sampler or self.run.objective.default_sampler, steps
        self.extractor, self.weights, self.device = extractor, weights, device

    def sample(self, labels: List[int], cfg: float, seed: int) -> Tuple[torch.Tensor, float]:
        """(uint8 (N, C, H, W) images on the CPU, seconds taken) for N ``labels`` at guidance ``cfg``,
        all noise drawn from one generator seeded with ``seed``."""
        run = self.run
        began = time.perf_counter()
        images = generate(run.model, run.objective, labels, run.latent_shape, codec=run.codec, sampler=self.sampler,
                          steps=self.steps, cfg_scale=cfg, seed=seed, batch_size=SAMPLE_BATCH,
                          autocast_dtype=autocast_dtype("auto", run.device))
        return images, time.perf_counter() - began

    def score(self, images: torch.Tensor, reference: Dataset) -> Dict[str, float]:
        """FID, IS, KID, precision and recall of uint8 (N, C, H, W) ``images`` against ``reference``
        (a dataset of uint8 (3, H, W) images)."""
        result = compute_metrics(TensorImageDataset(images), reference, feature_extractor=self.extractor,
                                 weights_path=self.weights, device=self.device)
        return {k: result[k] for k in METRIC_NAMES}
