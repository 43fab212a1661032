"""Training runs: the typed config, the trainer, EMA, DDP helpers, run directories.

``config`` (:class:`TrainConfig`, train.py's flags), ``trainer`` (:class:`Trainer`, the loop),
``training_data`` (datasets and loader of a run), ``ema``, ``distributed``, ``losses``
(losses.csv, loss plot), ``progress`` (log lines, tqdm), ``signals`` (SIGTERM/SIGINT),
``run_dir`` (creating run directories, loading a run's model for sampling), ``launch`` (one
training process from start to end).
"""
from .config import TrainConfig
from .launch import train
from .run_dir import SamplingRun, load_run
from .trainer import Trainer

__all__ = ["TrainConfig", "Trainer", "train", "SamplingRun", "load_run"]
