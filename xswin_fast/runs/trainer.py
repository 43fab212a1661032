"""The training loop: :class:`Trainer` owns a run's model, EMA, optimizer, data position and losses."""
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from ..checkpoints import (
    CheckpointError,
    capture_rng_state,
    checkpoint_path,
    load_weights,
    plain_data,
    prune_checkpoints,
    restore_rng_state,
    save_checkpoint,
)
from ..objectives.eps import Diffusion, autocast_dtype
from ..objectives.flow import FlowMatching, resolution_shift
from ..images import save_grid
from ..models import create_model
from ..objectives import Objective, saved_objective_config
from ..pipelines.export import export_run
from ..objectives.guidance import TextCondition
from ..objectives.sampling import generate
from .config import ConfigError, TrainConfig, op_backend
from .distributed import DistInfo, all_gather_object, all_reduce_max, barrier
from .ema import create_ema, ema_decay, update_ema
from .losses import LossLog, NonFiniteLoss, plot_loss_curve
from .progress import ProgressReport
from .signals import SignalCatcher
from .training_data import LatentBatch, build_training_data

logger = logging.getLogger(__name__)

# /2: the objective's config under "objective"; /1 (still read) held it under "diffusion" and
# only the objective's name under "objective"
CHECKPOINT_FORMAT = "xswin_fast.train/2"
READABLE_FORMATS = ("xswin_fast.train/1", CHECKPOINT_FORMAT)
PROBE = "loss or gradients on a probe batch"  # what NonFiniteState names when the weights are finite but diverged


@dataclass
class Position:
    """Where training stands: optimizer steps taken, and the batch within the epoch."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0

    def advance(self, steps_per_epoch: int) -> None:
        self.step += 1
        self.batch_in_epoch += 1
        if self.batch_in_epoch == steps_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0


def lr_factor(step: int, warmup_steps: int, schedule: str, total_steps: int) -> float:
    """Linear warm-up over ``warmup_steps``, then constant or cosine decay to 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        span = max(total_steps - warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * min(step - warmup_steps, span) / span))
    return 1.0


class NonFiniteState(RuntimeError):
    """The weights, EMA or optimizer state hold NaN or inf: the run diverged (a loss can still be
    finite, since it is computed before the update that overflowed)."""

    def __init__(self, step: int, parts: List[str]):
        super().__init__(f"the {' and '.join(parts)} hold NaN or inf values after step {step}")
        self.step, self.parts = step, parts


def non_finite_parts(model: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer) -> List[str]:
    """Which of "parameters", "EMA", "optimizer state" hold a non-finite floating-point value."""
    parts = {
        "parameters": model.state_dict().values(),
        "EMA": ema.state_dict().values(),
        "optimizer state": [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)],
    }
    checks = {name: [torch.isfinite(t).all() for t in tensors if t.is_floating_point()] for name, tensors in parts.items()}
    return [name for name, ok in checks.items() if ok and not bool(torch.stack(ok).all())]


def training_model(model: nn.Module, config: TrainConfig, dist: DistInfo) -> nn.Module:
    """``model`` as the loop calls it: wrapped in DDP under torchrun, compiled with --compile."""
    if dist.distributed:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    if config.compile:
        # static shapes: the stages call the same ops at different sizes, and automatic dynamic
        # shapes then trip Inductor on the window arithmetic; a training step's shapes are fixed
        model = torch.compile(model, dynamic=False)
    return model


class Trainer:
    """A run ready to train: :meth:`train_step` works right after construction, :meth:`fit` runs
    the loop with logging, checkpoints, sample grids, signals and the non-finite-loss stop.

    Args:
        config (TrainConfig): the run's settings (resolved: see ``new_run_config``).
        run_dir (Path): the run directory (it exists; see ``open_run_dir``).
        dist (DistInfo): this process's rank, world size and device. Default: one CPU process.
        resume (dict, optional): a train.py checkpoint to continue (``config.resume`` is its path).
    """

    def __init__(self, config: TrainConfig, run_dir: Path, dist: Optional[DistInfo] = None, resume: Optional[Dict[str, Any]] = None):
        self.config = config
        self.run_dir = Path(run_dir)
        self.dist = dist = dist or DistInfo()
        self.data = build_training_data(config, dist)
        steps = config.epochs * self.data.steps_per_epoch
        self.total_steps = min(steps, config.max_steps) if config.max_steps is not None else steps
        info = self.data.info
        self.model_kwargs = dict(input_size=info.latent_size, in_channels=info.latent_channels, num_classes=info.num_classes)
        if info.text_dim:
            self.model_kwargs["text_dim"] = info.text_dim
        for key, value in self.model_kwargs.items():
            if key in config.model_kwargs and config.model_kwargs[key] != value:
                raise ConfigError(f"--model-kwargs {key}={config.model_kwargs[key]!r} contradicts the data, which has "
                                  f"{key}={value} ({key} comes from the data: drop it from --model-kwargs)")
        self.model_kwargs.update(config.model_kwargs)
        torch.manual_seed(config.global_seed)  # the same initial weights on every rank
        try:
            self.model = create_model(config.model, **self.model_kwargs)
        except (TypeError, ValueError) as exc:  # a typo in --model-kwargs, a size the model cannot take
            raise ConfigError(f"--model {config.model} cannot be built with {self.model_kwargs}: {exc}") from exc
        if config.sample_cfg != 1 and config.captions and not config.caption_dropout:
            raise ConfigError(f"--sample-cfg {config.sample_cfg:g} needs a model trained with --caption-dropout above 0; "
                              "use --sample-cfg 1")
        if config.sample_cfg != 1 and not config.captions and getattr(getattr(self.model, "y_embedder", None), "dropout_prob", 0) <= 0:
            raise ConfigError(f"--sample-cfg {config.sample_cfg:g} needs a model trained with class dropout; use --sample-cfg 1")
        self.model.set_backend(op_backend(config.backend))
        if config.grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        self.model.to(dist.device)
        self.ema = create_ema(self.model)
        self.objective = self._build_objective()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        warmup, schedule = config.lr_warmup_steps, config.lr_schedule
        horizon = config.lr_decay_steps or self.total_steps
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, warmup, schedule, horizon)
        )
        self.train_model = training_model(self.model, config, dist)
        self.autocast_dtype = autocast_dtype(config.precision, dist.device)
        self.losses = LossLog(self.run_dir / "losses.csv", write=dist.is_main)
        self.position = self._load(resume) if resume is not None else Position()
        self.last_checkpoint: Optional[Path] = Path(config.resume) if resume is not None else None
        self.last_saved_step = self.position.step if resume is not None else -1
        self._seed_random_streams(resume)  # last: everything above may have drawn random numbers

    def _build_objective(self) -> Objective:
        """The run's objective: eps-prediction DDPM, or flow matching (which ignores the variance
        channels of a learned-sigma backbone, see ``xswin_fast.objectives.flow``)."""
        config = self.config
        if config.objective == "flow":
            shift = resolution_shift(config.image_size, config.image_size) if config.time_shift == "auto" else config.time_shift
            return FlowMatching(num_train_timesteps=config.num_timesteps, time_shift=shift, t_sampling=config.t_sampling,
                                logit_mean=config.logit_mean, logit_std=config.logit_std)
        return Diffusion(
            num_train_timesteps=config.num_timesteps, beta_schedule=config.beta_schedule,
            learn_sigma=self.model.out_channels == 2 * self.model.in_channels, clip_sample=self.data.codec is None,
        )

    def _load(self, ckpt: Dict[str, Any]) -> Position:
        """Restore the weights, EMA, optimizer and schedule of ``ckpt``; return its position."""
        saved = saved_objective_config(ckpt).get("objective", "eps")  # an eps config has no "objective" key
        if saved != self.config.objective:
            raise ConfigError(f"cannot resume with --objective {self.config.objective}: the checkpoint was trained with {saved}")
        path = self.config.resume
        load_weights(self.model, ckpt["model"], path, "model")
        load_weights(self.ema, ckpt["ema"], path, "ema")
        try:
            self.optimizer.load_state_dict(ckpt["opt"])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{path}: the 'opt' state does not fit the model's parameters: {exc}") from exc
        self.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
        self._apply_optimizer_settings()
        position = Position(int(ckpt["step"]), int(ckpt["epoch"]), int(ckpt["batch_in_epoch"]))
        if position.batch_in_epoch >= self.data.steps_per_epoch:
            position.epoch, position.batch_in_epoch = position.epoch + 1, 0
        return position

    def _apply_optimizer_settings(self) -> None:
        """Put the config's --lr and --weight-decay into a loaded optimizer and schedule, whose
        state dicts restore the saved values: a resume with a new --lr must train with it.
        Warm-up, schedule and --max-steps reach the schedule through its lambda; the current lr
        is recomputed with it exactly as ``LambdaLR`` does, so an unchanged run continues exactly."""
        sched, config = self.lr_scheduler, self.config
        sched.base_lrs = [config.lr] * len(self.optimizer.param_groups)
        lrs = [base * f(sched.last_epoch) for base, f in zip(sched.base_lrs, sched.lr_lambdas)]
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group.update(initial_lr=config.lr, lr=lr, weight_decay=config.weight_decay)

    def _seed_random_streams(self, resume: Optional[Dict[str, Any]]) -> None:
        if resume is not None and resume.get("world_size") == self.dist.world_size:
            restore_rng_state(resume["rng"][self.dist.rank], self.dist.device)
            return
        if resume is not None:
            logger.warning("world size changed since the checkpoint: data order continues, random streams are reseeded")
        s = self.dist.seed(self.config.global_seed) + 1_000_003 * self.position.step
        torch.manual_seed(s)
        np.random.seed(s % 2**32)
        random.seed(s)

    def clean_inputs(self, batch, sample_posterior: bool = True, caption_dropout: Optional[float] = None):
        """(x0, conditions) on the device from ``batch``: (images, labels), or a :class:`LatentBatch`
        (a posterior sample, or its mean without ``sample_posterior``). ``conditions`` are the
        model's keyword arguments: ``y`` (the labels), or in a --captions run the text inputs of
        one caption per image, dropped to the null caption with probability ``caption_dropout``
        (default: the run's --caption-dropout). TypeError for anything else."""
        dev, codec = self.dist.device, self.data.codec
        if isinstance(batch, LatentBatch):
            mean, std, y = (b.to(dev, non_blocking=True) for b in batch)
            x0 = codec.to_latent(mean + std * torch.randn_like(mean) if sample_posterior else mean)
        elif not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise TypeError(f"a batch must be (images, labels) or a LatentBatch, got a {type(batch).__name__}"
                            f"{f' of length {len(batch)}' if isinstance(batch, (tuple, list)) else ''}")
        else:
            x, y = (b.to(dev, non_blocking=True) for b in batch)
            x0 = codec.encode(x) if codec is not None else x
        table = self.data.captions
        if table is None:
            return x0, {"y": y}
        dropout = self.config.caption_dropout if caption_dropout is None else caption_dropout
        return x0, table.draw(y, dropout, dev, x0.dtype).model_kwargs()

    def train_step(self, batch) -> torch.Tensor:
        """One optimizer step on ``batch`` ((images, labels), or a :class:`LatentBatch` of cached
        posteriors); EMA updated. Returns the (4,) detached loss, mse, vb and gradient norm."""
        dev = self.dist.device
        x0, cond = self.clean_inputs(batch)
        t = self.objective.sample_timesteps(x0.shape[0], dev)
        noise = torch.randn_like(x0)
        x_t = self.objective.add_noise(x0, noise, t)
        with torch.autocast(dev.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None):
            out = self.train_model(x_t, t, **cond)
        terms = self.objective.training_losses(out, x0, x_t, t, noise)
        loss = terms["loss"].mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.max_grad_norm > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        else:
            grad_norm = torch.zeros((), device=dev)
        self.optimizer.step()
        self.lr_scheduler.step()
        update_ema(self.ema, self.model, ema_decay(self.config.ema_decay, self.position.step, self.config.ema_warmup))
        stats = torch.stack([loss.detach(), terms["mse"].mean().detach(), terms["vb"].mean().detach(), grad_norm.detach().float()])
        self.losses.add(stats)
        return stats

    def fit(self) -> int:
        """Train to ``total_steps``, then write the final checkpoint, sample grid and loss plot.

        Returns the exit status: 0 (also after a signal-triggered save), 2 after a non-finite loss.
        """
        self._start()
        report = ProgressReport(
            self.position.step, self.total_steps, self.config.global_batch_size, self.dist.device,
            bar=self.dist.is_main and self.config.progress,
        )
        start_time, start_step = time.perf_counter(), self.position.step
        try:
            with SignalCatcher() as signals:
                stop = self._loop(signals, report)
                self._flush(report, log=True)
                if self.position.step != self.last_saved_step:
                    self.save(stop or "end of training")
        except (NonFiniteLoss, NonFiniteState) as exc:
            self._report_non_finite(exc)
            return 2
        finally:
            report.close()
        self._log_throughput(time.perf_counter() - start_time, self.position.step - start_step, report.last_loss)
        if stop:
            logger.info(f"stopped by {stop}; resume with: python train.py --resume {self.run_dir}")
            return 0
        if self.dist.is_main:
            grid = self.sample_grid(self.run_dir / "samples.png", progress="bar" if self.config.progress else "log")
            plot = plot_loss_curve(self.losses.path, self.run_dir / "loss.png")
            logger.info(f"wrote {grid} and {plot}")
            logger.info(f"exported the EMA model as {export_run(self.run_dir, self.run_dir / 'model')} (XSwinPipeline folder)")
        barrier()
        return 0

    def _loop(self, signals: SignalCatcher, report: ProgressReport) -> Optional[str]:
        """Steps until ``total_steps`` (returns None) or a signal (returns "signal NAME")."""
        config, pos = self.config, self.position
        while pos.step < self.total_steps:
            self.data.sampler.set_epoch(pos.epoch, pos.batch_in_epoch, self.data.local_batch)
            for batch in self.data.loader:
                stats = self.train_step(batch)
                pos.advance(self.data.steps_per_epoch)
                if not self._finite_on_every_rank(stats[0]):
                    self._flush(report, log=False)  # writes the steps before; NonFiniteLoss names this one
                report.tick()
                stop = self._any_rank_signalled(signals)
                if pos.step % config.log_every == 0:
                    self._flush(report, log=True)
                if pos.step % config.ckpt_every == 0:
                    self._flush(report, log=False)
                    self.save()
                if stop:
                    return f"signal {signals.name}"
                if config.sample_every and pos.step % config.sample_every == 0 and pos.step < self.total_steps:
                    self.sample_grid(self.run_dir / "samples" / f"{pos.step:07d}.png")
                    barrier()
                if pos.step >= self.total_steps:
                    return None
        return None

    def _finite_on_every_rank(self, loss: torch.Tensor) -> bool:
        """Whether this step's loss is finite on every rank: checked every step, so a run stops at
        the step that produced a NaN, not at the next log flush (one host sync per step)."""
        bad = (~torch.isfinite(loss)).float()
        if self.dist.distributed:
            bad = all_reduce_max(bad)
        return not bool(bad.item())

    def _any_rank_signalled(self, signals: SignalCatcher) -> bool:
        stop = signals.signum is not None
        if self.dist.distributed:  # every rank must stop at the same step
            stop = bool(all_reduce_max(torch.tensor(float(stop), device=self.dist.device)).item())
        return stop

    def _flush(self, report: ProgressReport, log: bool) -> None:
        report.losses += self.losses.flush(self.position.step)
        if log:
            report.log(self.position.step, self.optimizer.param_groups[0]["lr"])

    def _start(self) -> None:
        """Log the run, write config.json and split.json, cut losses.csv back to a resumed step."""
        config, info = self.config, self.data.info
        n_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        space = "pixel space" if self.data.codec is None else f"latents of {config.vae}"
        logger.info(
            f"{config.model} {self.model_kwargs}: {n_params / 1e6:.2f}M parameters | data {info.kind} "
            f"{info.num_train} train / {info.num_eval} held out, {info.num_classes} classes | "
            f"{space} {info.latent_channels}x{info.latent_size}x{info.latent_size}"
        )
        if self.dist.is_main:
            config.save(self.run_dir / "config.json", model_kwargs=self.model_kwargs)
            self.data.write_split(self.run_dir)
        if config.resume is not None:
            self.losses.truncate(self.position.step)
            pos = self.position
            logger.info(f"resumed from {config.resume} at step {pos.step} (epoch {pos.epoch}, batch {pos.batch_in_epoch})")
        logger.info(
            f"training ({config.objective}) to step {self.total_steps} ({self.data.steps_per_epoch} steps/epoch, global batch "
            f"{config.global_batch_size}, lr {config.lr:g}, EMA {config.ema_decay}{' with warm-up' if config.ema_warmup else ''})"
        )

    def _report_non_finite(self, exc: Exception) -> None:
        last = self.last_checkpoint if self.last_checkpoint and self.last_checkpoint.is_file() else None
        kind = "non-finite loss" if isinstance(exc, NonFiniteLoss) else "diverged" if PROBE in exc.parts else "non-finite weights"
        logger.error(
            f"stopping: {exc} ({kind}). Nothing after step {self.last_saved_step if last else 0} was saved; "
            f"the last good checkpoint is {last or 'none (no checkpoint was written yet)'}. "
            "Resume from it with a lower --lr, stronger --max-grad-norm or --precision fp32."
        )

    def _log_throughput(self, elapsed: float, steps: int, last_loss: float) -> None:
        if steps:
            images = steps * self.config.global_batch_size
            logger.info(
                f"{steps} steps in {elapsed:.1f} s ({steps / elapsed:.2f} steps/s, {images / elapsed:.1f} images/s); "
                f"last logged loss {last_loss:.4f}"
            )

    def save(self, reason: str = "") -> Path:
        """Checkpoint the current step (every rank's RNG state gathered; rank 0 writes).

        Only a resumable state is written: :class:`NonFiniteState` if the parameters, EMA or
        optimizer state hold NaN or inf, or the training loss or its gradients on a fixed probe
        batch are not finite, so the newest checkpoint is always the last good one."""
        pos = self.position
        bad = non_finite_parts(self.model, self.ema, self.optimizer)
        if not bad and not self._probe_is_finite():
            bad = [PROBE]
        if self.dist.distributed:  # every rank must take the same decision
            bad_anywhere = all_reduce_max(torch.tensor(float(bool(bad)), device=self.dist.device)).item()
            bad = bad or (["weights on another rank"] if bad_anywhere else [])
        if bad:
            raise NonFiniteState(pos.step, bad)
        rng = all_gather_object(capture_rng_state(self.dist.device))
        path = checkpoint_path(self.run_dir / "checkpoints", pos.step)
        if self.dist.is_main:
            ckpt = {
                "format": CHECKPOINT_FORMAT,
                "model": self.model.state_dict(),
                "ema": self.ema.state_dict(),
                "opt": self.optimizer.state_dict(),
                "lr_scheduler": self.lr_scheduler.state_dict(),
                "step": pos.step,
                "epoch": pos.epoch,
                "batch_in_epoch": pos.batch_in_epoch,
                "world_size": self.dist.world_size,
                "rng": rng,
                "args": self.config.to_dict(),
                "model_name": self.config.model,
                "model_kwargs": plain_data(self.model_kwargs),
                "data": asdict(self.data.info),
                "objective": plain_data(self.objective.config()),
            }
            save_checkpoint(ckpt, path)
            prune_checkpoints(self.run_dir / "checkpoints", self.config.keep_last)
            logger.info(f"saved checkpoint {path}{' (' + reason + ')' if reason else ''}")
        barrier()
        self.last_saved_step = pos.step
        self.last_checkpoint = path
        return path

    def _probe_is_finite(self) -> bool:
        """Whether the training loss and its gradients are finite on a fixed probe batch (the first
        training items, the posterior means of cached latents, timesteps spread over the range,
        noise of a private generator): weights can be finite and still diverged (|w| 1e7), and
        then a resume fails at its first step. Eval mode and no ``.grad`` written: no running
        statistics move, no class is dropped and no global random number is drawn."""
        dev, objective = self.dist.device, self.objective
        items = [self.data.train_set[i] for i in range(min(4, len(self.data.train_set)))]
        x0, cond = self.clean_inputs(torch.utils.data.default_collate(items), sample_posterior=False, caption_dropout=0.0)
        n, g = x0.shape[0], torch.Generator().manual_seed(0)
        noise = torch.randn(x0.shape, generator=g).to(dev, x0.dtype)
        t = torch.linspace(0, 1, n) * (objective.num_timesteps - 1)
        t = (t.round().long() if objective.name == "eps" else t).to(dev)
        training = self.model.training
        self.model.eval()
        try:
            with torch.autocast(dev.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None):
                out = self.model(objective.add_noise(x0, noise, t), t, **cond)
            loss = objective.training_losses(out, x0, objective.add_noise(x0, noise, t), t, noise)["loss"].mean()
            params = [p for p in self.model.parameters() if p.requires_grad]
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        finally:
            self.model.train(training)
        return bool(torch.isfinite(loss)) and all(bool(torch.isfinite(g).all()) for g in grads if g is not None)

    def sample_grid(self, path: Path, progress: str = "none") -> Optional[Path]:
        """An EMA sample grid of ``sample_num`` images (fixed noise and labels: comparable across
        steps), with ``progress`` "none", "bar" or "log" (see ``generate``). Rank 0 only; other
        ranks return None."""
        if not self.dist.is_main:
            return None
        config, info = self.config, self.data.info
        n, nc = config.sample_num, info.num_classes
        labels, nrow = [i % nc for i in range(n)] if nc else None, min(nc, n) if 0 < nc <= 32 else None
        if self.data.captions is not None:
            labels, prompts = self.grid_prompts(n)
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).with_suffix(".txt").write_text("\n".join(prompts) + "\n")
        images = generate(
            self.ema, self.objective, labels, (info.latent_channels, info.latent_size, info.latent_size),
            codec=self.data.codec, sampler=config.sample_sampler, steps=config.sample_steps, cfg_scale=config.sample_cfg,
            seed=config.global_seed, batch_size=n, autocast_dtype=self.autocast_dtype, progress=progress,
        )
        return save_grid(images, path, nrow=nrow)

    def grid_prompts(self, n: int) -> Tuple[TextCondition, List[str]]:
        """The grids' ``n`` prompts of a --captions run (the first distinct captions of the folder,
        repeated to ``n``; written beside each grid as its .txt) and their :class:`TextCondition`."""
        table = self.data.captions
        rows = [i % len(table.captions) for i in range(n)]
        cond = TextCondition(table.of_captions(rows, self.dist.device, torch.float32))
        return cond, [table.captions[i] for i in rows]
