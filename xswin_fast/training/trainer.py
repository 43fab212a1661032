"""``train.py``: class-conditional diffusion training, from one CPU to many GPUs with torchrun.

    python train.py                                   # the built-in job: digits, pixel space, CPU
    python train.py --data /data/caltech101 --image-size 64 --model XSwin-paper --vae ema
    torchrun --nproc_per_node 8 train.py --data /data/imagenet/train --model XSwin-S/2
    python train.py --resume results/000-XSwin-S-2    # continue exactly where it stopped

Without ``--data`` the run trains a small XSwin on scikit-learn's bundled handwritten digits
(1,797 8x8 images, 10 classes, no download) in pixel space and writes ``samples.png`` and
``loss.png`` into the run directory. See docs/training.md for every flag.
"""
import argparse
import csv
import json
import logging
import math
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from . import distributed as D
from .builders import build_model, load_vae, model_names
from .checkpoint import (
    CheckpointError,
    capture_rng_state,
    checkpoint_path,
    list_checkpoints,
    load_newest_checkpoint,
    prune_checkpoints,
    restore_rng_state,
    save_checkpoint,
)
from .data import (
    DigitsDataset,
    ImageFolderDataset,
    ResumableDistributedSampler,
    build_latent_cache,
    latent_cache_key,
    scan_image_folder,
    stratified_split,
)
from .diffusion import SAMPLERS, Diffusion
from .ema import create_ema, ema_decay, update_ema
from .images import plot_loss_curve, save_grid

logger = logging.getLogger("xswin_fast.training")

CHECKPOINT_FORMAT = "xswin_fast.train/1"

# Defaults that depend on the dataset: the built-in digits job must finish in minutes on a CPU,
# while --data runs follow DiT's recipe (AdamW 1e-4, batch 256, EMA 0.9999, SD VAE).
DIGITS_DEFAULTS = dict(
    model="XSwin-digits", image_size=8, eval_fraction=0.2, hflip=False, vae="none", num_workers=0,
    global_batch_size=64, lr=2e-3, lr_warmup_steps=100, lr_schedule="cosine", epochs=1000, max_steps=1500,
    ema_decay=0.9999, ema_warmup=True, log_every=100, ckpt_every=500, sample_every=500, sample_num=100,
    sample_steps=50, sample_sampler="ddpm", sample_cfg=2.5,
    # the digits model's ops are tiny: 2 threads are ~1.4x faster than 1 on an idle 2-core CPU, but
    # 10x slower when other processes compete for the cores (OpenMP spin-waiting)
    threads="auto",
)
DATA_DEFAULTS = dict(
    model="XSwin-S/2", image_size=256, eval_fraction=0.0, hflip=True, vae="ema", num_workers=4,
    global_batch_size=256, lr=1e-4, lr_warmup_steps=0, lr_schedule="constant", epochs=1400, max_steps=None,
    ema_decay=0.9999, ema_warmup=False, log_every=100, ckpt_every=50_000, sample_every=10_000, sample_num=16,
    sample_steps=250, sample_sampler="ddpm", sample_cfg=4.0, threads=0,
)
# settings a resumed run may change without breaking the exact continuation
RESUME_SAFE = {
    "resume", "max_steps", "epochs", "log_every", "ckpt_every", "keep_last", "sample_every", "sample_num",
    "sample_steps", "sample_sampler", "sample_cfg", "progress", "num_workers", "run_dir", "results_dir",
    "compile", "backend", "grad_checkpointing",
}


class NonFiniteLoss(RuntimeError):
    def __init__(self, step: int, value: float):
        super().__init__(f"loss is {value} at step {step}")
        self.step, self.value = step, value


def build_parser(suppress: bool = False) -> argparse.ArgumentParser:
    """The train.py argument parser; ``suppress`` drops all defaults (to see what was typed)."""
    p = argparse.ArgumentParser(
        prog="train.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS if suppress else None,
    )

    def add(*names, **kw):
        if suppress:
            kw.pop("default", None)
        p.add_argument(*names, **kw)

    Bool = argparse.BooleanOptionalAction
    g = "data"
    add("--data", help="ImageFolder root (one subfolder per class); default: sklearn's digits (built in)")
    add("--image-size", type=int, help=f"{g}: pixels (resize + center crop); default 8 (digits) / 256")
    add("--eval-fraction", type=float, help="stratified held-out fraction for evaluate.py; default 0.2 (digits) / 0")
    add("--hflip", action=Bool, help="random horizontal flips; default off for digits, on for --data")
    add("--num-workers", type=int, help="data-loader workers per process; default 0 (digits) / 4")
    add("--vae", help='"none" (pixel space), a local AutoencoderKL dir, a hub id, or "ema"/"mse" '
        "(stabilityai/sd-vae-ft-*); default none (digits) / ema")
    add("--vae-subfolder", help="subfolder of --vae holding the VAE (e.g. 'vae' in a pipeline repo)")
    add("--cache-latents", action="store_true", default=False, help="encode the dataset once and train on cached posteriors")
    add("--latent-cache-dir", help="parent of the latent caches (one subfolder per data/VAE hash); default RESULTS_DIR/latent-cache")
    add("--model", help=f"backbone preset; default XSwin-digits / XSwin-S/2. One of: {', '.join(model_names())}")
    add("--model-kwargs", default="{}", help='JSON constructor overrides, e.g. \'{"embed_dim": 32, "depths": [1, 1]}\'')
    add("--backend", default="auto", choices=["auto", "torch", "triton"], help="op backend of the model")
    add("--grad-checkpointing", action="store_true", default=False, help="recompute blocks in backward")
    add("--compile", action="store_true", default=False, help="torch.compile the training model")
    add("--diffusion-steps", type=int, default=1000, help="training timesteps T (linear betas 1e-4..0.02)")
    add("--beta-schedule", default="linear", choices=["linear", "scaled_linear", "squaredcos_cap_v2"])
    add("--global-batch-size", type=int, help="summed over all processes; default 64 (digits) / 256")
    add("--lr", type=float, help="AdamW learning rate; default 2e-3 (digits) / 1e-4 (DiT)")
    add("--weight-decay", type=float, default=0.0, help="AdamW weight decay (DiT: 0)")
    add("--lr-warmup-steps", type=int, help="linear warm-up steps; default 100 (digits) / 0")
    add("--lr-schedule", choices=["constant", "cosine"], help="after warm-up: constant (DiT) or cosine decay to 0 "
        "at --max-steps; default cosine (digits) / constant")
    add("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm; 0 disables")
    add("--epochs", type=int, help="default 1000 (digits) / 1400 (DiT)")
    add("--max-steps", type=int, help="stop after this many optimizer steps; default 1500 (digits) / none")
    add("--ema-decay", type=float, help="EMA decay over parameters and buffers; default 0.9999")
    add("--ema-warmup", action=Bool, help="use min(decay, (1+step)/(10+step)); default on (digits) / off")
    add("--precision", default="auto", choices=["auto", "bf16", "fp32"], help="autocast; auto = bf16 on CUDA, fp32 on CPU")
    add("--tf32", action=Bool, default=True, help="allow TF32 matmuls on Ampere+ GPUs")
    add("--global-seed", type=int, default=0, help="seed of rank r is global_seed * world_size + r")
    add("--threads", help="CPU threads per process: N, 0 (torch's default) or auto (torch's default on an idle "
        "machine, 1 when the load average shows other work); default auto (digits) / 0")
    add("--device", default="auto", help="auto (cuda:LOCAL_RANK if available, else cpu), cpu, cuda, cuda:1, ...")
    add("--results-dir", default="results", help="parent of numbered run directories")
    add("--run-dir", help="explicit run directory (default RESULTS_DIR/NNN-MODEL; on resume, the checkpoint's)")
    add("--log-every", type=int, help="log (and flush losses.csv) every N steps; default 100")
    add("--ckpt-every", type=int, help="checkpoint every N steps (and always at the end); default 500 / 50000")
    add("--keep-last", type=int, default=0, help="keep only the newest N step checkpoints (0 = all)")
    add("--sample-every", type=int, help="EMA sample grid every N steps (0 = only at the end); default 500 / 10000")
    add("--sample-num", type=int, help="images per sample grid; default 100 / 16")
    add("--sample-steps", type=int, help="sampler steps for grids; default 50 / 250")
    add("--sample-sampler", choices=SAMPLERS, help="ddpm (respaced) or ddim; default ddpm")
    add("--sample-cfg", type=float, help="classifier-free guidance scale of grids; default 2.5 / 4.0")
    add("--progress", action=Bool, help="tqdm progress bar on rank 0; default: when stderr is a terminal")
    add("--resume", help="checkpoint file, checkpoints dir or run dir: continue that run exactly")
    return p


def resolve_config(args: Dict[str, Any]) -> Dict[str, Any]:
    cfg = dict(args)
    defaults = DATA_DEFAULTS if cfg.get("data") else DIGITS_DEFAULTS
    for k, v in defaults.items():
        if cfg.get(k) is None:
            cfg[k] = v
    if cfg.get("data"):
        cfg["data"] = os.path.abspath(os.path.expanduser(cfg["data"]))
    cfg["vae"] = None if str(cfg["vae"]).lower() == "none" else cfg["vae"]
    if cfg["vae"] and os.path.isdir(os.path.expanduser(cfg["vae"])):
        cfg["vae"] = os.path.abspath(os.path.expanduser(cfg["vae"]))
    if cfg["progress"] is None:
        cfg["progress"] = sys.stderr.isatty()
    try:
        kw = json.loads(cfg["model_kwargs"]) if isinstance(cfg["model_kwargs"], str) else dict(cfg["model_kwargs"])
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--model-kwargs is not valid JSON: {exc}")
    if not isinstance(kw, dict):
        raise SystemExit("--model-kwargs must be a JSON object")
    cfg["model_kwargs"] = kw
    if cfg["model"] not in model_names():
        raise SystemExit(f"unknown --model {cfg['model']!r}; choose one of: {', '.join(model_names())}")
    if cfg["cache_latents"] and not cfg["vae"]:
        raise SystemExit("--cache-latents needs a --vae")
    if not cfg.get("data") and cfg["vae"]:
        raise SystemExit("the built-in digits are 1-channel 8x8 images: train them in pixel space (--vae none)")
    for k in ("global_batch_size", "log_every", "ckpt_every"):
        if cfg[k] is not None and cfg[k] < 1:
            raise SystemExit(f"--{k.replace('_', '-')} must be >= 1")
    return cfg


def resolve_threads(value, processes_per_node: int = 1) -> int:
    """--threads: an int (0 = leave torch's default) or "auto": 0 when the CPU looks idle (1-minute
    load average below half the cores left for this process), else 1."""
    if value in (None, "", 0, "0"):
        return 0
    if str(value) != "auto":
        try:
            n = int(value)
        except ValueError:
            raise SystemExit(f"--threads must be an integer or 'auto', got {value!r}")
        if n < 0:
            raise SystemExit("--threads must be >= 0")
        return n
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - platforms without getloadavg
        return 1
    return 0 if load < 0.5 * max(cores - processes_per_node + 1, 1) else 1


def _explicit_keys(argv: Optional[List[str]]) -> set:
    ns, _ = build_parser(suppress=True).parse_known_args(argv)
    return set(vars(ns))


def _plain(obj):
    """JSON round trip: the run config as plain data (weights-only loadable)."""
    return json.loads(json.dumps(obj, default=str))


class _SignalCatcher:
    """SIGTERM/SIGINT set a flag (the loop saves and exits); a second signal acts normally."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            raise KeyboardInterrupt(f"second signal {signum}")
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._previous.items():
            signal.signal(s, h)
        return False


class Trainer:
    def __init__(self, cfg: Dict[str, Any], resume: Optional[Dict[str, Any]] = None, resume_path: Optional[Path] = None):
        self.cfg = cfg
        self.resume = resume
        self.resume_path = resume_path
        self._handlers: List[logging.Handler] = []

    # ---------------------------------------------------------------- set-up
    def _setup_logging(self) -> None:
        logger.setLevel(logging.INFO if self.info.is_main else logging.WARNING)
        fmt = logging.Formatter("[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
        if self.info.is_main:
            hs = [logging.StreamHandler(sys.stdout), logging.FileHandler(self.run_dir / "log.txt")]
        else:
            hs = [logging.StreamHandler(sys.stderr)]
            fmt = logging.Formatter(f"[rank {self.info.rank}] %(levelname)s %(message)s")
        for h in hs:
            h.setFormatter(fmt)
            logger.addHandler(h)
            self._handlers.append(h)

    def _teardown_logging(self) -> None:
        for h in self._handlers:
            logger.removeHandler(h)
            h.close()
        self._handlers = []

    def _make_run_dir(self) -> Path:
        cfg = self.cfg
        if cfg.get("run_dir"):
            run_dir = Path(cfg["run_dir"])
        elif self.resume_path is not None:
            p = self.resume_path.parent
            run_dir = p.parent if p.name == "checkpoints" else p
        else:
            run_dir = None
            if self.info.is_main:
                root = Path(cfg["results_dir"])
                root.mkdir(parents=True, exist_ok=True)
                index = len([d for d in root.iterdir() if d.is_dir() and d.name[:3].isdigit()])
                name = cfg["model"].replace("/", "-")
                while (root / f"{index:03d}-{name}").exists():
                    index += 1
                run_dir = root / f"{index:03d}-{name}"
            run_dir = Path(D.broadcast_object(str(run_dir) if run_dir else None))
        if self.resume is None and list_checkpoints(run_dir / "checkpoints"):
            raise SystemExit(f"{run_dir} already holds checkpoints: pass --resume {run_dir} to continue it, or pick another --run-dir")
        if self.info.is_main:
            (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            (run_dir / "samples").mkdir(exist_ok=True)
        D.barrier()
        return run_dir

    def _build_data(self) -> None:
        cfg, info = self.cfg, self.info
        if cfg.get("data"):
            scan = scan_image_folder(cfg["data"])
            classes, samples = scan
            labels = [lab for _, lab in samples]
            train_idx, eval_idx = stratified_split(labels, cfg["eval_fraction"], cfg["global_seed"])
            base = ImageFolderDataset(cfg["data"], cfg["image_size"], indices=train_idx, scan=scan)
            eval_ids = [os.path.relpath(samples[i][0], base.root) for i in eval_idx]
        else:
            full = DigitsDataset()
            train_idx, eval_idx = stratified_split(full.all_targets, cfg["eval_fraction"], cfg["global_seed"])
            base = DigitsDataset(train_idx, image_size=cfg["image_size"])
            classes = base.classes
            eval_ids = [str(i) for i in eval_idx]
        self.classes = classes
        self.codec = None
        channels = base.channels
        latent_size = cfg["image_size"]
        if cfg["vae"]:
            try:
                self.codec = load_vae(cfg["vae"], info.device, cfg.get("vae_subfolder"))
            except RuntimeError as exc:
                raise SystemExit(f"{exc} (--vae none trains in pixel space)")
            if self.codec.image_channels != channels:
                raise SystemExit(f"the VAE takes {self.codec.image_channels}-channel images, the data has {channels}")
            if cfg["image_size"] % self.codec.downsample:
                raise SystemExit(f"--image-size must be divisible by the VAE's downsampling factor {self.codec.downsample}")
            latent_size = cfg["image_size"] // self.codec.downsample
            channels = self.codec.latent_channels
        if cfg["cache_latents"]:
            key = latent_cache_key(base, cfg["vae"], cfg["hflip"])
            cache_dir = os.path.join(cfg.get("latent_cache_dir") or os.path.join(cfg["results_dir"], "latent-cache"), key)
            self.train_set = build_latent_cache(
                base, self.codec, Path(cache_dir), cfg["hflip"], info.rank, info.world_size,
                num_workers=cfg["num_workers"],
            )
        else:
            self.train_set = base
        self.data_info = dict(
            kind=base.kind, root=cfg.get("data"), classes=list(classes), num_classes=len(classes),
            image_size=cfg["image_size"], image_channels=base.channels, latent_size=latent_size,
            latent_channels=channels, num_train=len(self.train_set), num_eval=len(eval_ids),
        )
        if info.is_main:
            split = {"kind": base.kind, "root": cfg.get("data"), "eval_fraction": cfg["eval_fraction"], "seed": cfg["global_seed"],
                     "image_size": cfg["image_size"], "eval": eval_ids}
            tmp = self.run_dir / ".split.json.tmp"
            tmp.write_text(json.dumps(split))
            os.replace(tmp, self.run_dir / "split.json")

        W = info.world_size
        if cfg["global_batch_size"] % W:
            raise SystemExit(f"--global-batch-size {cfg['global_batch_size']} must be divisible by the world size {W}")
        self.local_batch = cfg["global_batch_size"] // W
        self.sampler = ResumableDistributedSampler(
            self.train_set, num_replicas=W, rank=info.rank, shuffle=True, seed=cfg["global_seed"], hflip=cfg["hflip"]
        )
        self.steps_per_epoch = self.sampler.num_samples // self.local_batch
        if self.steps_per_epoch == 0:
            raise SystemExit(
                f"the per-process batch {self.local_batch} is larger than this process's share of the data "
                f"({self.sampler.num_samples} images); lower --global-batch-size"
            )
        nw = cfg["num_workers"]
        self.loader = torch.utils.data.DataLoader(
            self.train_set, batch_size=self.local_batch, sampler=self.sampler, num_workers=nw,
            pin_memory=info.device.type == "cuda", drop_last=True, persistent_workers=nw > 0,
            # its own generator: creating an iterator must not consume the global RNG (exact resume)
            generator=torch.Generator().manual_seed(cfg["global_seed"]),
        )

    def _build_model(self) -> None:
        cfg, info, di = self.cfg, self.info, self.data_info
        kwargs = dict(input_size=di["latent_size"], in_channels=di["latent_channels"], num_classes=di["num_classes"])
        kwargs.update(cfg["model_kwargs"])
        self.model_kwargs = kwargs
        torch.manual_seed(cfg["global_seed"])  # the same initial weights on every rank
        model = build_model(cfg["model"], kwargs)
        model.set_backend(None if cfg["backend"] == "auto" else cfg["backend"])
        if cfg["grad_checkpointing"]:
            model.set_grad_checkpointing(True)
        self.model = model.to(info.device)
        self.ema = create_ema(self.model)
        learn_sigma = self.model.out_channels == 2 * self.model.in_channels
        self.diffusion = Diffusion(
            num_train_timesteps=cfg["diffusion_steps"], beta_schedule=cfg["beta_schedule"],
            learn_sigma=learn_sigma, clip_sample=self.codec is None,
        )
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        self.lr_sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: self._lr_factor(s))
        train_model = self.model
        if info.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            train_model = DDP(self.model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
        if cfg["compile"]:
            # static shapes: the stages call the same ops at different sizes, and automatic dynamic
            # shapes then trip Inductor on the window arithmetic; a training step's shapes are fixed
            train_model = torch.compile(train_model, dynamic=False)
        self.train_model = train_model
        use_bf16 = cfg["precision"] == "bf16" or (cfg["precision"] == "auto" and info.device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None

    def _lr_factor(self, step: int) -> float:
        """Linear warm-up over ``lr_warmup_steps``, then constant or cosine decay to 0 at ``total_steps``."""
        warm = self.cfg["lr_warmup_steps"]
        if warm > 0 and step < warm:
            return (step + 1) / warm
        if self.cfg["lr_schedule"] == "cosine":
            span = max(self.total_steps - warm, 1)
            return 0.5 * (1 + math.cos(math.pi * min(step - warm, span) / span))
        return 1.0

    def _load_resume(self) -> None:
        ck = self.resume
        self.model.load_state_dict(ck["model"])
        self.ema.load_state_dict(ck["ema"])
        self.opt.load_state_dict(ck["opt"])
        self.lr_sched.load_state_dict(ck["lr_scheduler"])
        self.step = int(ck["step"])
        self.epoch = int(ck["epoch"])
        self.batch_in_epoch = int(ck["batch_in_epoch"])
        if self.batch_in_epoch >= self.steps_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        if self.info.is_main:  # drop loss rows logged after the checkpoint
            rows = self._read_losses()
            self._write_losses([r for r in rows if int(r["step"]) <= self.step], mode="w")

    # ---------------------------------------------------------------- bookkeeping
    @property
    def losses_path(self) -> Path:
        return self.run_dir / "losses.csv"

    def _read_losses(self) -> List[Dict[str, str]]:
        if not self.losses_path.is_file():
            return []
        with open(self.losses_path) as f:
            return list(csv.DictReader(f))

    def _write_losses(self, rows, mode="a") -> None:
        new = mode == "w" or not self.losses_path.is_file()
        with open(self.losses_path, mode, newline="") as f:
            w = csv.DictWriter(f, fieldnames=["step", "loss", "mse", "vb", "grad_norm"])
            if new:
                w.writeheader()
            for r in rows:
                w.writerow(r)

    def _flush(self) -> List[float]:
        """Average pending per-step losses over ranks, append them to losses.csv, check they are finite."""
        if not self._pending:
            return []
        vals = D.all_reduce_mean(torch.stack(self._pending).float())
        rows = vals.cpu().tolist()
        first = self.step - len(rows) + 1
        self._pending = []
        good = []
        bad = None
        for k, (loss, mse, vb, gn) in enumerate(rows):
            if not math.isfinite(loss):
                bad = (first + k, loss)
                break
            good.append({"step": first + k, "loss": f"{loss:.6g}", "mse": f"{mse:.6g}", "vb": f"{vb:.6g}", "grad_norm": f"{gn:.6g}"})
        if self.info.is_main and good:
            self._write_losses(good)
        self._interval_losses += [float(r["loss"]) for r in good]
        if bad is not None:
            raise NonFiniteLoss(*bad)
        return [float(r["loss"]) for r in good]

    def _log(self) -> None:
        now = time.perf_counter()
        if self.info.device.type == "cuda":
            torch.cuda.synchronize(self.info.device)
            now = time.perf_counter()
        steps = self.step - self._last_log_step
        dt = max(now - self._last_log_time, 1e-9)
        if steps <= 0 or not self._interval_losses:
            return
        avg = sum(self._interval_losses) / len(self._interval_losses)
        sps = steps / dt
        ips = sps * self.cfg["global_batch_size"]
        if self.info.device.type == "cuda":
            mem = f"peak mem {torch.cuda.max_memory_allocated(self.info.device) / 2**30:.2f} GiB"
        else:
            import resource

            mem = f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB"
        lr = self.opt.param_groups[0]["lr"]
        logger.info(
            f"(step={self.step:07d}) loss {avg:.4f} | {sps:.2f} steps/s | {ips:.1f} images/s | {mem} | lr {lr:.2e}"
        )
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{avg:.4f}", refresh=False)
        self.last_loss = avg
        self._interval_losses = []
        self._last_log_step, self._last_log_time = self.step, now

    def _save(self, reason: str = "") -> Path:
        rng = D.all_gather_object(capture_rng_state(self.info.device))
        path = checkpoint_path(self.run_dir / "checkpoints", self.step)
        if self.info.is_main:
            ckpt = {
                "format": CHECKPOINT_FORMAT,
                "model": self.model.state_dict(),
                "ema": self.ema.state_dict(),
                "opt": self.opt.state_dict(),
                "lr_scheduler": self.lr_sched.state_dict(),
                "step": self.step,
                "epoch": self.epoch,
                "batch_in_epoch": self.batch_in_epoch,
                "world_size": self.info.world_size,
                "rng": rng,
                "args": _plain(self.cfg),
                "model_name": self.cfg["model"],
                "model_kwargs": _plain(self.model_kwargs),
                "data": _plain(self.data_info),
                "diffusion": _plain(self.diffusion.config()),
            }
            save_checkpoint(ckpt, path)
            prune_checkpoints(self.run_dir / "checkpoints", self.cfg["keep_last"])
            logger.info(f"saved checkpoint {path}{' (' + reason + ')' if reason else ''}")
        D.barrier()
        self.last_saved_step = self.step
        self.last_checkpoint = path
        return path

    def sample_grid(self, path: Path, n: Optional[int] = None) -> Optional[Path]:
        """An EMA sample grid (fixed noise and labels: comparable across steps). Rank 0 only."""
        if not self.info.is_main:
            return None
        cfg = self.cfg
        n = n or cfg["sample_num"]
        nc = self.data_info["num_classes"]
        labels = torch.arange(n, device=self.info.device) % nc
        gen = torch.Generator(device=self.info.device).manual_seed(cfg["global_seed"])
        di = self.data_info
        x = self.diffusion.sample(
            self.ema, labels, (di["latent_channels"], di["latent_size"], di["latent_size"]),
            sampler=cfg["sample_sampler"], steps=cfg["sample_steps"], cfg_scale=cfg["sample_cfg"],
            generator=gen, autocast_dtype=self.autocast_dtype,
        )
        if self.codec is not None:
            x = self.codec.decode(x)
        save_grid(x, path, nrow=min(nc, n) if nc <= 32 else None)
        return path

    # ---------------------------------------------------------------- loop
    def train_step(self, batch) -> None:
        dev = self.info.device
        if len(batch) == 3:  # cached posteriors
            mean, std, y = (b.to(dev, non_blocking=True) for b in batch)
            x0 = self.codec.to_latent(mean + std * torch.randn_like(mean))
        else:
            x, y = (b.to(dev, non_blocking=True) for b in batch)
            x0 = self.codec.encode(x) if self.codec is not None else x
        t = self.diffusion.sample_timesteps(x0.shape[0], dev)
        noise = torch.randn_like(x0)
        x_t = self.diffusion.add_noise(x0, noise, t)
        with torch.autocast(dev.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None):
            out = self.train_model(x_t, t, y)
        terms = self.diffusion.training_losses(out, x0, x_t, t, noise)
        loss = terms["loss"].mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg["max_grad_norm"] > 0:
            gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg["max_grad_norm"])
        else:
            gn = torch.zeros((), device=dev)
        self.opt.step()
        self.lr_sched.step()
        update_ema(self.ema, self.model, ema_decay(self.cfg["ema_decay"], self.step, self.cfg["ema_warmup"]))
        self._pending.append(torch.stack([loss.detach(), terms["mse"].mean().detach(), terms["vb"].mean().detach(), gn.detach().float()]))

    def run(self) -> int:
        cfg = self.cfg
        self.info = info = D.setup(cfg["device"])
        try:
            self.run_dir = self._make_run_dir()
            self._setup_logging()
            try:
                return self._run()
            finally:
                self._teardown_logging()
        finally:
            D.cleanup()

    def _run(self) -> int:
        cfg, info = self.cfg, self.info
        threads = resolve_threads(cfg.get("threads"), info.world_size)
        if threads:
            torch.set_num_threads(threads)
        if info.device.type == "cpu":  # CPU results depend on the thread count: a resume reuses it
            cfg["threads"] = torch.get_num_threads()
        if info.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = cfg["tf32"]
            torch.backends.cudnn.allow_tf32 = cfg["tf32"]
        seed = cfg["global_seed"] * info.world_size + info.rank
        logger.info(
            f"run directory {self.run_dir} | world size {info.world_size} | device {info.device} | seed {seed}"
            + (f" | {torch.get_num_threads()} CPU threads" if info.device.type == "cpu" else "")
        )
        self._build_data()
        steps = self.cfg["epochs"] * self.steps_per_epoch
        self.total_steps = min(steps, cfg["max_steps"]) if cfg["max_steps"] is not None else steps
        self._build_model()
        n_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        logger.info(
            f"{cfg['model']} {self.model_kwargs}: {n_params / 1e6:.2f}M parameters | data {self.data_info['kind']} "
            f"{self.data_info['num_train']} train / {self.data_info['num_eval']} held out, {self.data_info['num_classes']} classes | "
            f"{'pixel space' if self.codec is None else 'latents of ' + str(cfg['vae'])} "
            f"{self.data_info['latent_channels']}x{self.data_info['latent_size']}x{self.data_info['latent_size']}"
        )
        if info.is_main:
            (self.run_dir / "config.json").write_text(json.dumps(_plain({**cfg, "model_kwargs": self.model_kwargs}), indent=2))

        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.last_saved_step, self.last_checkpoint, self.last_loss = -1, None, float("nan")
        if self.resume is not None:
            self._load_resume()
            logger.info(f"resumed from {self.resume_path} at step {self.step} (epoch {self.epoch}, batch {self.batch_in_epoch})")
            self.last_saved_step, self.last_checkpoint = self.step, self.resume_path
        max_steps = self.total_steps

        # the RNG state goes last: everything above may have drawn random numbers
        if self.resume is not None and self.resume.get("world_size") == info.world_size:
            restore_rng_state(self.resume["rng"][info.rank], info.device)
        else:
            if self.resume is not None:
                logger.warning("world size changed since the checkpoint: data order continues, random streams are reseeded")
            s = seed + 1_000_003 * self.step
            torch.manual_seed(s)
            np.random.seed(s % 2**32)
            random.seed(s)

        self.model.train()
        self.ema.eval()
        self._pending: List[torch.Tensor] = []
        self._interval_losses: List[float] = []
        self._last_log_step, self._last_log_time = self.step, time.perf_counter()
        self._bar = None
        if info.is_main and cfg["progress"]:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=max_steps, initial=self.step, desc="train", dynamic_ncols=True)
        logger.info(
            f"training to step {max_steps} ({self.steps_per_epoch} steps/epoch, global batch {cfg['global_batch_size']}, "
            f"lr {cfg['lr']:g}, EMA {cfg['ema_decay']}{' with warm-up' if cfg['ema_warmup'] else ''})"
        )
        start = time.perf_counter()
        start_step = self.step
        stop: Optional[str] = None
        try:
            with _SignalCatcher() as sig:
                stop = self._loop(max_steps, sig)
                self._flush()
                self._log()
                if self.step != self.last_saved_step:
                    self._save(stop or "end of training")
        except NonFiniteLoss as exc:
            last = self.last_checkpoint if self.last_checkpoint and Path(self.last_checkpoint).is_file() else None
            logger.error(
                f"stopping: {exc} (non-finite loss). Nothing after step {self.last_saved_step if last else 0} was saved; "
                f"the last good checkpoint is {last or 'none (no checkpoint was written yet)'}. "
                "Resume from it with a lower --lr, stronger --max-grad-norm or --precision fp32."
            )
            return 2
        finally:
            if self._bar is not None:
                self._bar.close()
        elapsed = time.perf_counter() - start
        done = self.step - start_step
        if done:
            logger.info(
                f"{done} steps in {elapsed:.1f} s ({done / elapsed:.2f} steps/s, "
                f"{done * cfg['global_batch_size'] / elapsed:.1f} images/s); last logged loss {self.last_loss:.4f}"
            )
        if stop and stop.startswith("signal"):
            logger.info(f"stopped by {stop}; resume with: python train.py --resume {self.run_dir}")
            return 0
        if info.is_main:
            grid = self.sample_grid(self.run_dir / "samples.png")
            plot = plot_loss_curve(self.losses_path, self.run_dir / "loss.png")
            logger.info(f"wrote {grid} and {plot}")
        D.barrier()
        return 0

    def _loop(self, max_steps: int, sig: _SignalCatcher) -> Optional[str]:
        cfg, info = self.cfg, self.info
        while self.step < max_steps:
            self.sampler.set_epoch(self.epoch, self.batch_in_epoch, self.local_batch)
            for batch in self.loader:
                self.train_step(batch)
                self.step += 1
                self.batch_in_epoch += 1
                if self.batch_in_epoch == self.steps_per_epoch:
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                if self._bar is not None:
                    self._bar.update(1)
                stop = sig.signum is not None
                if info.distributed:  # every rank must stop at the same step
                    stop = bool(D.all_reduce_max(torch.tensor(float(stop), device=info.device)).item())
                if self.step % cfg["log_every"] == 0:
                    self._flush()
                    self._log()
                if self.step % cfg["ckpt_every"] == 0:
                    self._flush()
                    self._save()
                if stop:
                    name = signal.Signals(sig.signum).name if sig.signum else "signal on another rank"
                    return f"signal {name}"
                if cfg["sample_every"] and self.step % cfg["sample_every"] == 0 and self.step < max_steps:
                    self.sample_grid(self.run_dir / "samples" / f"{self.step:07d}.png")
                    D.barrier()
                if self.step >= max_steps:
                    return None
        return None


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = vars(build_parser().parse_args(argv))
    if args.get("resume"):
        try:
            path, ckpt = load_newest_checkpoint(args["resume"])
        except CheckpointError as exc:
            raise SystemExit(f"cannot resume: {exc}")
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise SystemExit(f"cannot resume from {path}: not a train.py checkpoint (format {ckpt.get('format')!r})")
        cfg = dict(ckpt["args"])
        explicit = _explicit_keys(argv) - {"resume"}
        overrides = {k: args[k] for k in explicit}
        if "vae" in overrides and str(overrides["vae"]).lower() == "none":
            overrides["vae"] = None
        if "model_kwargs" in overrides:
            overrides["model_kwargs"] = json.loads(overrides["model_kwargs"])
        changed = sorted(k for k, v in overrides.items() if cfg.get(k) != v and k not in RESUME_SAFE)
        if changed:
            logger.warning("resuming with changed %s: the run will not continue exactly as it would have", changed)
        cfg.update(overrides)
        if "run_dir" not in explicit:  # continue where the checkpoint is, even if the run was moved
            cfg["run_dir"] = None
        cfg["resume"] = str(path)
        return Trainer(cfg, ckpt, Path(path)).run()
    return Trainer(resolve_config(args)).run()
