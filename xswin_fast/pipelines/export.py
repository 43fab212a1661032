"""train.py run folders as ready model folders, and model folders read back for sampling.

``export_run(run, out_dir)`` writes the EMA model of a run's newest checkpoint as an
``XSwinPipeline`` folder (``transformer/``, ``scheduler/`` with the training DDPM schedule of an
eps run or a flow run's ``FlowMatchEulerDiscreteScheduler`` with its time shift,
``vae/`` for a latent run, class names as ``id2label``; ``text_encoder/`` and ``tokenizer/`` for
a text-to-image run) plus ``xswin_run.json`` (the checkpoint's data description, run arguments and
step) and ``xswin_fast_pipeline.py`` (see ``make_loadable_by_diffusers``), so that
``XSwinPipeline.from_pretrained(out_dir)`` samples it, as does
``DiffusionPipeline.from_pretrained(out_dir, trust_remote_code=True)``, and ``read_model_folder(out_dir)`` gives
sample.py / evaluate.py everything they take from a checkpoint. The run's held-out split
(``split.json``) is copied along, so evaluate.py can score the folder against it.
"""
import json
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Union

import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.utils import logging as diffusers_logging

from ..checkpoints import CheckpointError, load_newest_checkpoint
from ..models import create_model
from ..models.base import DiffusionBackbone
from ..objectives import saved_objective_config
from ..text import TextEncoder
from ..text.encoder import no_transformers_loading_bar
from ..vae import LatentCodec, load_vae
from .xswin_pipeline import XSwinPipeline

RUN_FILE = "xswin_run.json"
PIPELINE_MODULE = "xswin_fast_pipeline"
PIPELINE_MODULE_TEXT = '''"""Lets diffusers load this folder in a process that has not imported xswin_fast:
DiffusionPipeline.from_pretrained(folder, trust_remote_code=True) runs this file, which only imports
the pipeline class of the installed xswin_fast package. XSwinPipeline.from_pretrained(folder) does
not run it."""
from xswin_fast.pipelines import XSwinPipeline  # noqa: F401
'''


def make_loadable_by_diffusers(folder: Union[str, Path]) -> None:
    """Let ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` load a saved
    XSwinPipeline folder in any process. diffusers looks a string ``_class_name`` up in its own
    namespace, where ``XSwinPipeline`` is only after ``import xswin_fast.pipelines``; a
    ``[module, class]`` pair whose ``<module>.py`` is in the folder is imported from there instead,
    once the caller trusts the folder's code (without ``trust_remote_code=True`` diffusers refuses
    and names it). ``XSwinPipeline.load_config`` reads the pair back as its own name."""
    folder = Path(folder)
    index = folder / "model_index.json"
    config = json.loads(index.read_text())
    config["_class_name"] = [PIPELINE_MODULE, XSwinPipeline.__name__]
    (folder / f"{PIPELINE_MODULE}.py").write_text(PIPELINE_MODULE_TEXT)
    index.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def training_scheduler(objective: Dict[str, Any]):
    """The diffusers scheduler that samples a model trained with ``objective`` (a checkpoint's
    objective config): the DDPM schedule of an eps run; for a flow run, FlowMatchEulerDiscreteScheduler,
    whose times (t * num_train_timesteps, 1 = noise), velocity (noise - data) and shift are the
    training's (objectives/flow.py)."""
    if objective.get("objective", "eps") == "flow":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=objective["num_train_timesteps"],
                                               shift=objective.get("time_shift", 1.0))
    return DDPMScheduler.from_config(objective)


def export_run(run: Union[str, Path], out_dir: Union[str, Path], use_ema: bool = True) -> Path:
    """Write the model of a train.py checkpoint (file, ``checkpoints/`` dir or run dir) to
    ``out_dir`` as an XSwinPipeline folder; the EMA weights unless ``use_ema`` is False.
    Returns ``out_dir`` as a Path."""
    path, ck = load_newest_checkpoint(run)
    for key in ("model_name", "model_kwargs", "ema", "model", "data", "args", "step"):
        if key not in ck:
            raise CheckpointError(f"{path} is not a train.py checkpoint (no {key!r})")
    objective = saved_objective_config(ck)
    model = create_model(ck["model_name"], **ck["model_kwargs"])
    model.load_state_dict(ck["ema" if use_ema else "model"])
    args = ck["args"]
    vae = load_vae(args["vae"], torch.device("cpu"), args.get("vae_subfolder")).vae if args.get("vae") else None
    scheduler = training_scheduler(objective)
    text = {}
    if args.get("text_encoder"):
        encoder = TextEncoder.from_pretrained(args["text_encoder"], args["text_encoder_dtype"], "cpu", args["text_max_length"])
        text = dict(text_encoder=encoder.model, tokenizer=encoder.tokenizer, text_max_length=encoder.max_length)
    pipe = XSwinPipeline(model.eval(), scheduler, vae=vae, id2label=dict(enumerate(ck["data"]["classes"])), **text)
    out_dir = Path(out_dir)
    pipe.save_pretrained(out_dir)
    make_loadable_by_diffusers(out_dir)
    record = {"data": ck["data"], "args": args, "step": int(ck["step"]), "weights": "ema" if use_ema else "model",
              "objective": objective}
    (out_dir / RUN_FILE).write_text(json.dumps(record, indent=2, default=str))
    run_dir = Path(path).parent
    run_dir = run_dir.parent if run_dir.name == "checkpoints" else run_dir
    split = run_dir / "split.json"
    if split.is_file():
        shutil.copyfile(split, out_dir / "split.json")
    return out_dir


MODEL_FOLDER_FILES = ("model_index.json", RUN_FILE)  # what export_run writes beside the components


def is_model_folder(path: Union[str, Path], partly: bool = False) -> bool:
    """Whether ``path`` is a folder written by ``export_run`` (rather than a run folder or file):
    it holds every file of ``MODEL_FOLDER_FILES``, or with ``partly`` any of them (a damaged one)."""
    found = [(Path(path) / name).is_file() for name in MODEL_FOLDER_FILES]
    return any(found) if partly else all(found)


@contextmanager
def _no_loading_bar() -> Iterator[None]:
    """diffusers' "Loading pipeline components" bar and transformers' "Loading weights" bar (a text
    model's encoder) off: sample.py's stderr is for its errors."""
    was_on = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    try:
        with no_transformers_loading_bar():
            yield
    finally:
        if was_on:
            diffusers_logging.enable_progress_bar()


@dataclass
class ModelFolder:
    """What sampling and evaluation need from a model folder: the backbone (eval mode, no grad),
    the training objective's config (``objective_from_config`` takes it), the VAE as a
    ``LatentCodec`` (None in pixel space), and the run's data description, arguments and step."""

    model: DiffusionBackbone
    objective: Dict[str, Any]
    codec: Optional[LatentCodec]
    data: Dict[str, Any]
    args: Dict[str, Any]
    step: int
    device: torch.device
    text_encoder: Optional[TextEncoder] = None


def read_model_folder(path: Union[str, Path], device: Optional[str] = None, backend: Optional[str] = None) -> ModelFolder:
    """Load a folder written by ``export_run`` on ``device`` (default: cuda if available) with op
    ``backend`` ("torch", "triton" or None for automatic). CheckpointError naming ``path`` for a
    folder that lacks a file or does not load (a damaged weights file, a bad config)."""
    path = Path(path)
    missing = [name for name in MODEL_FOLDER_FILES if not (path / name).is_file()]
    if missing:
        raise CheckpointError(f"{path} is not a model folder (no {' and no '.join(missing)})")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        with _no_loading_bar():
            pipe = XSwinPipeline.from_pretrained(path)
    except (ValueError, TypeError) as exc:  # the folder checks' and the config's messages
        raise CheckpointError(f"the model folder {path} does not load: {exc}") from exc
    model = pipe.transformer.set_backend(backend).to(dev).eval().requires_grad_(False)
    codec = None
    if pipe.vae is not None:
        codec = LatentCodec(pipe.vae.to(dev).eval().requires_grad_(False), str(path / "vae"))
    record = json.loads((path / RUN_FILE).read_text())
    text = pipe.text
    if text is not None:
        text.model.to(dev)
    objective = record.get("objective") or dict(pipe.scheduler.config)  # folders before 2026-12-08: eps, the DDPM config
    return ModelFolder(model, objective, codec, record["data"], record["args"], record["step"], dev, text)
