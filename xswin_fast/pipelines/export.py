"""train.py run folders as ready model folders, and model folders read back for sampling.

``export_run(run, out_dir)`` writes the EMA model of a run's newest checkpoint as an
``XSwinPipeline`` folder (``transformer/``, ``scheduler/`` with the training DDPM schedule,
``vae/`` for a latent run, class names as ``id2label``; ``text_encoder/`` and ``tokenizer/`` for
a text-to-image run) plus ``xswin_run.json`` (the
checkpoint's data description, run arguments and step), so that
``XSwinPipeline.from_pretrained(out_dir)`` samples it and ``read_model_folder(out_dir)`` gives
sample.py / evaluate.py everything they take from a checkpoint. The run's held-out split
(``split.json``) is copied along, so evaluate.py can score the folder against it.

Flow-matching runs are refused: XSwinPipeline samples eps-prediction models only.
"""
import shutil
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from diffusers import DDPMScheduler

from ..checkpoints import CheckpointError, load_newest_checkpoint
from ..models import create_model
from ..models.base import DiffusionBackbone
from ..objectives import saved_objective_config
from ..text import TextEncoder
from ..vae import LatentCodec, load_vae
from .xswin_pipeline import XSwinPipeline

RUN_FILE = "xswin_run.json"


def export_run(run: Union[str, Path], out_dir: Union[str, Path], use_ema: bool = True) -> Path:
    """Write the model of a train.py checkpoint (file, ``checkpoints/`` dir or run dir) to
    ``out_dir`` as an XSwinPipeline folder; the EMA weights unless ``use_ema`` is False.
    Returns ``out_dir`` as a Path."""
    path, ck = load_newest_checkpoint(run)
    for key in ("model_name", "model_kwargs", "ema", "model", "data", "args", "step"):
        if key not in ck:
            raise CheckpointError(f"{path} is not a train.py checkpoint (no {key!r})")
    objective = saved_objective_config(ck)
    if objective.get("objective", "eps") != "eps":
        raise ValueError(f"{path} is a {objective['objective']} run: only eps-prediction runs export as an "
                         "XSwinPipeline folder (sample.py and evaluate.py take the run folder itself)")
    model = create_model(ck["model_name"], **ck["model_kwargs"])
    model.load_state_dict(ck["ema" if use_ema else "model"])
    args = ck["args"]
    vae = load_vae(args["vae"], torch.device("cpu"), args.get("vae_subfolder")).vae if args.get("vae") else None
    scheduler = DDPMScheduler.from_config(objective)
    text = {}
    if args.get("text_encoder"):
        encoder = TextEncoder.from_pretrained(args["text_encoder"], args["text_encoder_dtype"], "cpu", args["text_max_length"])
        text = dict(text_encoder=encoder.model, tokenizer=encoder.tokenizer, text_max_length=encoder.max_length)
    pipe = XSwinPipeline(model.eval(), scheduler, vae=vae, id2label=dict(enumerate(ck["data"]["classes"])), **text)
    out_dir = Path(out_dir)
    pipe.save_pretrained(out_dir)
    record = {"data": ck["data"], "args": args, "step": int(ck["step"]), "weights": "ema" if use_ema else "model"}
    (out_dir / RUN_FILE).write_text(json.dumps(record, indent=2, default=str))
    run_dir = Path(path).parent
    run_dir = run_dir.parent if run_dir.name == "checkpoints" else run_dir
    split = run_dir / "split.json"
    if split.is_file():
        shutil.copyfile(split, out_dir / "split.json")
    return out_dir


def is_model_folder(path: Union[str, Path]) -> bool:
    """Whether ``path`` is a folder written by ``export_run`` (rather than a run folder or file)."""
    path = Path(path)
    return (path / "model_index.json").is_file() and (path / RUN_FILE).is_file()


@dataclass
class ModelFolder:
    """What sampling and evaluation need from a model folder: the backbone (eval mode, no grad),
    the training scheduler's config (``Diffusion.from_config`` takes it), the VAE as a
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
    ``backend`` ("torch", "triton" or None for automatic)."""
    path = Path(path)
    if not is_model_folder(path):
        raise CheckpointError(f"{path} is not a model folder (no model_index.json and {RUN_FILE})")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe = XSwinPipeline.from_pretrained(path)
    model = pipe.transformer.set_backend(backend).to(dev).eval().requires_grad_(False)
    codec = None
    if pipe.vae is not None:
        codec = LatentCodec(pipe.vae.to(dev).eval().requires_grad_(False), str(path / "vae"))
    record = json.loads((path / RUN_FILE).read_text())
    text = pipe.text
    if text is not None:
        text.model.to(dev)
    return ModelFolder(model, dict(pipe.scheduler.config), codec, record["data"], record["args"], record["step"], dev, text)
