"""train.py and the Trainer on the CPU: a step, loss goes down, exact resume, torchrun/gloo, signals,
NaN stop, VAE latents, EMA.

Tiny models (XSwin embed 16, depths (1, 1)) and a handful of steps; the model runs on the
PyTorch reference backend (the kernels have their own tests).
"""
import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import torch.nn as nn

from xswin_fast.checkpoints import list_checkpoints, load_checkpoint, save_checkpoint
from xswin_fast.cli import train
from xswin_fast.objectives import Diffusion, objective_from_config
from xswin_fast.runs.config import TrainConfig
from xswin_fast.runs.ema import create_ema, update_ema
from xswin_fast.runs.trainer import Trainer, non_finite_parts

ROOT = Path(__file__).resolve().parents[1]
from families import TINY_DIGITS  # noqa: E402
from helpers import train_args  # noqa: E402


def tiny_args(run_dir, *extra):
    return train_args(run_dir, "--lr-warmup-steps", "0", *extra)


def read_losses(run_dir):
    with open(Path(run_dir) / "losses.csv") as f:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]


def subprocess_env():
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def test_trainer_train_step_works_right_after_construction(tmp_path):
    config = TrainConfig(model_kwargs=json.loads(TINY_DIGITS), backend="torch", global_batch_size=16, threads=1, progress=False)
    trainer = Trainer(config, tmp_path)
    assert not any(tmp_path.iterdir())  # constructing a trainer writes nothing
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    ema_before = {k: v.clone() for k, v in trainer.ema.named_parameters()}
    x, y = next(iter(trainer.data.loader))
    assert x.shape == (16, 1, 8, 8)
    stats = trainer.train_step((x, y))
    assert stats.shape == (4,) and torch.isfinite(stats).all()  # loss, mse, vb, gradient norm
    changed = [k for k, v in trainer.model.named_parameters() if not torch.equal(v, before[k])]
    assert len(changed) > len(before) // 2, sorted(set(before) - set(changed))
    assert any(not torch.equal(v, ema_before[k]) for k, v in trainer.ema.named_parameters())
    assert trainer.losses.pending and trainer.position.step == 0  # the loop advances the position


def test_train_digits_loss_decreases(tmp_path):
    run = tmp_path / "run"
    rc = train.main(tiny_args(run, "--max-steps", "40", "--lr", "3e-3", "--ckpt-every", "1000"))
    assert rc == 0
    losses = [v for _, v in read_losses(run)]
    assert len(losses) == 40
    assert np.mean(losses[-8:]) < 0.7 * np.mean(losses[:8]), losses
    # the end of a run: one checkpoint, an EMA sample grid and the loss curve
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["0000040.pt"]
    assert (run / "samples.png").stat().st_size > 0 and (run / "loss.png").stat().st_size > 0
    split = json.loads((run / "split.json").read_text())
    assert split["kind"] == "digits" and len(split["eval"]) == 359  # stratified 20% of 1,797
    ck = load_checkpoint(run / "checkpoints" / "0000040.pt")
    assert ck["data"]["latent_channels"] == 1 and ck["data"]["latent_size"] == 8
    # EMA covers buffers: the BatchNorm statistics moved away from their initial 0 / 1
    ema_bn = [v for k, v in ck["ema"].items() if k.endswith("running_mean")]
    assert ema_bn and any(v.abs().sum() > 0 for v in ema_bn)


def test_train_resume_reproduces_uninterrupted_run(tmp_path, monkeypatch):
    # batch 512 -> 2 steps per epoch: the 6 steps cross epochs and the resume starts mid-epoch;
    # flips, warm-up + cosine learning rate and EMA warm-up all have to continue exactly
    common = ["--global-batch-size", "512", "--hflip", "--ckpt-every", "100", "--lr", "2e-3", "--max-steps", "6",
              "--lr-warmup-steps", "2", "--lr-schedule", "cosine", "--ema-decay", "0.9"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert train.main(tiny_args(full, *common)) == 0

    original = Trainer.train_step

    def interrupted(self, batch):  # SIGTERM arrives during step 3: the run saves step 3 and exits
        stats = original(self, batch)
        if self.position.step == 2:
            signal.raise_signal(signal.SIGTERM)
        return stats

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    assert train.main(tiny_args(part, *common)) == 0
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(part / "checkpoints")] == ["0000003.pt"]
    ck3 = load_checkpoint(part / "checkpoints" / "0000003.pt")
    assert (ck3["epoch"], ck3["batch_in_epoch"]) == (1, 1)
    assert not (part / "samples.png").exists()  # an interrupted run stops right after saving

    assert train.main(["--resume", str(part)]) == 0
    a, b = read_losses(full), read_losses(part)
    assert [s for s, _ in a] == list(range(1, 7)) and a == b  # bit-identical losses
    fa = load_checkpoint(full / "checkpoints" / "0000006.pt")
    fb = load_checkpoint(part / "checkpoints" / "0000006.pt")
    for key in ("model", "ema"):
        for k, v in fa[key].items():
            assert torch.equal(v, fb[key][k]), (key, k)
    assert fa["opt"]["param_groups"][0]["lr"] == fb["opt"]["param_groups"][0]["lr"]


def test_train_in_parts_follows_one_cosine_with_lr_decay_steps(tmp_path):
    # trained to step 2, then resumed to 4: with --lr-decay-steps 4 the learning rate of every
    # step is the one of a single 4-step run (without it, part one would decay to 0 at step 2)
    common = ["--lr-schedule", "cosine", "--lr", "2e-3", "--lr-warmup-steps", "0"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert train.main(tiny_args(whole, *common, "--max-steps", "4", "--ckpt-every", "1")) == 0
    assert train.main(tiny_args(parts, *common, "--max-steps", "2", "--lr-decay-steps", "4")) == 0
    assert train.main(["--resume", str(parts), "--max-steps", "4"]) == 0
    assert read_losses(whole) == read_losses(parts)
    for step in (2, 4):
        a = load_checkpoint(whole / "checkpoints" / f"{step:07d}.pt")["opt"]["param_groups"][0]["lr"]
        b = load_checkpoint(parts / "checkpoints" / f"{step:07d}.pt")["opt"]["param_groups"][0]["lr"]
        assert a == b and (a > 0) == (step < 4)


def test_train_resume_applies_a_new_lr_and_weight_decay(tmp_path):
    same, lower = tmp_path / "same", tmp_path / "lower"
    assert train.main(tiny_args(same, "--max-steps", "2", "--lr-schedule", "constant", "--lr", "3e-3")) == 0
    shutil.copytree(same, lower)
    assert train.main(["--resume", str(same), "--max-steps", "4"]) == 0
    assert train.main(["--resume", str(lower), "--max-steps", "4", "--lr", "1e-5", "--weight-decay", "0.5"]) == 0
    a, b = read_losses(same), read_losses(lower)
    assert a[:3] == b[:3]  # step 3's loss comes from the checkpoint's weights
    assert a[3][1] != b[3][1]  # step 4's from weights updated with the new lr
    for run, lr, wd in ((same, 3e-3, 0.0), (lower, 1e-5, 0.5)):
        ck = load_checkpoint(run / "checkpoints" / "0000004.pt")
        group = ck["opt"]["param_groups"][0]
        assert (group["lr"], group["initial_lr"], group["weight_decay"]) == (lr, lr, wd)
        assert ck["lr_scheduler"]["base_lrs"] == [lr] and (ck["args"]["lr"], ck["args"]["weight_decay"]) == (lr, wd)
        assert json.loads((run / "config.json").read_text())["lr"] == lr


def test_train_resume_refuses_a_different_model(tmp_path):
    run = tmp_path / "run"
    assert train.main(tiny_args(run, "--max-steps", "1")) == 0
    with pytest.raises(SystemExit, match="cannot resume with --model-kwargs"):
        train.main(["--resume", str(run), "--model-kwargs", '{"embed_dim": 32}'])
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["0000001.pt"]


def test_train_grad_checkpointing_gives_the_same_losses(tmp_path):
    plain, ckpt = tmp_path / "plain", tmp_path / "gc"
    assert train.main(tiny_args(plain, "--max-steps", "3")) == 0
    assert train.main(tiny_args(ckpt, "--max-steps", "3", "--grad-checkpointing")) == 0
    a, b = read_losses(plain), read_losses(ckpt)
    assert len(a) == 3 and [s for s, _ in a] == [s for s, _ in b]
    assert np.allclose([v for _, v in a], [v for _, v in b], rtol=1e-5, atol=1e-6)


def test_train_resume_refuses_a_run_dir_with_checkpoints(tmp_path):
    run = tmp_path / "run"
    assert train.main(tiny_args(run, "--max-steps", "1")) == 0
    with pytest.raises(SystemExit, match="--resume"):
        train.main(tiny_args(run, "--max-steps", "2"))


def test_train_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, caplog):
    calls = {"n": 0}
    original = Diffusion.training_losses

    def poisoned(self, *args, **kwargs):
        terms = original(self, *args, **kwargs)
        calls["n"] += terms["loss"].shape[0] == 16  # training batches, not the checkpoint's probe batch of 4
        if calls["n"] >= 5:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(Diffusion, "training_losses", poisoned)
    run = tmp_path / "run"
    with caplog.at_level("ERROR", logger="xswin_fast"):
        rc = train.main(tiny_args(run, "--max-steps", "10", "--ckpt-every", "2"))
    assert rc == 2
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["0000002.pt", "0000004.pt"]
    load_checkpoint(run / "checkpoints" / "0000004.pt")
    assert [s for s, _ in read_losses(run)] == [1, 2, 3, 4]
    assert "non-finite loss" in caplog.text and "0000004.pt" in caplog.text


def test_train_divergence_keeps_the_last_finite_checkpoint(tmp_path, caplog):
    run = tmp_path / "run"
    assert train.main(tiny_args(run, "--max-steps", "2", "--ckpt-every", "1", "--lr-schedule", "constant")) == 0
    # an lr of 5e37 blows the weights up in the step-3 update; step 3's loss (before it) is finite
    with caplog.at_level("ERROR", logger="xswin_fast"):
        rc = train.main(["--resume", str(run), "--max-steps", "6", "--lr", "5e37"])
    assert rc == 2
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["0000001.pt", "0000002.pt"]
    assert [s for s, _ in read_losses(run)] == [1, 2, 3]
    ck = load_checkpoint(run / "checkpoints" / "0000002.pt")
    for key in ("model", "ema"):
        assert all(torch.isfinite(v).all() for v in ck[key].values() if v.is_floating_point()), key
    # the weights after step 3 may still be finite (5e37 * a small gradient), the probe's loss is not
    assert "0000002.pt" in caplog.text and "after step 3" in caplog.text
    assert "non-finite weights" in caplog.text or "diverged" in caplog.text


def test_train_non_finite_parts_names_parameters_ema_and_optimizer_state():
    model = nn.Linear(3, 2)
    ema = create_ema(model)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    assert non_finite_parts(model, ema, opt) == []
    next(iter(opt.state.values()))["exp_avg_sq"][0] = float("nan")
    assert non_finite_parts(model, ema, opt) == ["optimizer state"]
    with torch.no_grad():
        model.bias[0] = float("inf")
        ema.weight[0, 0] = float("-inf")
    assert non_finite_parts(model, ema, opt) == ["parameters", "EMA", "optimizer state"]


def test_train_sigterm_saves_checkpoint_and_exits_cleanly(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), *tiny_args(run, "--max-steps", "100000", "--ckpt-every", "100000")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            if (run / "losses.csv").is_file() and len(read_losses(run)) >= 3:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "SIGTERM" in out
    ckpts = list_checkpoints(run / "checkpoints")
    assert len(ckpts) == 1
    ck = load_checkpoint(ckpts[0])
    assert ck["step"] == read_losses(run)[-1][0] >= 3


@pytest.mark.parametrize("objective", ["eps", "flow"])
def test_train_torchrun_two_process_gloo(tmp_path, objective):
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(ROOT / "train.py"),
        *tiny_args(run, "--max-steps", "3", "--ckpt-every", "2", "--device", "cpu", "--objective", objective),
    ]
    res = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["0000002.pt", "0000003.pt"]
    ck = load_checkpoint(run / "checkpoints" / "0000003.pt")
    assert ck["world_size"] == 2 and len(ck["rng"]) == 2 and objective_from_config(ck["objective"]).name == objective
    assert not torch.equal(ck["rng"][0]["torch"], ck["rng"][1]["torch"])  # per-rank seeds
    assert [s for s, _ in read_losses(run)] == [1, 2, 3]
    assert "world size 2" in (run / "log.txt").read_text()


def _tiny_vae_and_folder(tmp_path):
    from xswin_fast.compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    from diffusers import AutoencoderKL
    from PIL import Image

    torch.manual_seed(0)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4, norm_num_groups=4,
    )
    vae_dir = tmp_path / "vae"
    vae.save_pretrained(vae_dir)
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (data / c).mkdir(parents=True)
        for i in range(6 if c == "cat" else 5):
            arr = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(arr).save(data / c / f"{i}.png")
    (data / "dog" / "broken.png").write_bytes(b"this is not a png")
    return vae_dir, data


@pytest.mark.parametrize("cache", [False, True], ids=["encode-every-step", "cached-latents"])
def test_train_vae_dir_latents(tmp_path, cache):
    vae_dir, data = _tiny_vae_and_folder(tmp_path)
    run = tmp_path / "run"
    extra = ["--cache-latents", "--latent-cache-dir", str(tmp_path / "cache")] if cache else []
    rc = train.main(tiny_args(
        run, "--data", str(data), "--image-size", "16", "--vae", str(vae_dir), "--global-batch-size", "4",
        "--max-steps", "3", "--num-workers", "0", "--model", "XSwin-digits", *extra,
    ))
    assert rc == 0
    ck = load_checkpoint(run / "checkpoints" / "0000003.pt")
    assert ck["data"]["latent_channels"] == 4 and ck["data"]["latent_size"] == 8
    assert ck["model_kwargs"]["in_channels"] == 4
    assert ck["data"]["classes"] == ["cat", "dog"]
    assert all(np.isfinite(v) for _, v in read_losses(run))
    assert "skipping unreadable image" in (run / "log.txt").read_text()
    assert (run / "samples.png").is_file()  # decoded through the VAE
    if cache:
        assert ck["data"]["num_train"] == 11 and list((tmp_path / "cache").glob("*/shard-0-of-1.pt"))
        again = tmp_path / "again"  # a second run reuses the cache instead of encoding again
        assert train.main(tiny_args(
            again, "--data", str(data), "--image-size", "16", "--vae", str(vae_dir), "--global-batch-size", "4",
            "--max-steps", "1", "--num-workers", "0", "--model", "XSwin-digits", *extra,
        )) == 0
        assert "using cached VAE latents" in (again / "log.txt").read_text()


def test_train_ema_tracks_parameters_and_buffers():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    ema = create_ema(model)
    model.train()
    model(torch.randn(8, 1, 6, 6) + 3.0)  # moves BatchNorm running stats
    with torch.no_grad():
        model[0].weight.add_(1.0)
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    update_ema(ema, model, decay=0.75)
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(ema.state_dict()[k], 0.75 * before[k] + 0.25 * v), k
        else:
            assert torch.equal(ema.state_dict()[k], v), k  # num_batches_tracked is copied
    assert not ema.training and not any(p.requires_grad for p in ema.parameters())


def test_train_flow_run_samples_and_resumes_exactly(tmp_path):
    from xswin_fast.cli import sample

    common = ["--objective", "flow", "--t-sampling", "logit-normal", "--time-shift", "0.125", "--lr-schedule", "constant",
              "--ckpt-every", "2", "--ema-decay", "0.9"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert train.main(tiny_args(full, *common, "--max-steps", "4")) == 0
    assert json.loads((full / "config.json").read_text())["objective"] == "flow"
    ck = load_checkpoint(full / "checkpoints" / "0000004.pt")
    assert ck["format"] == "xswin_fast.train/2" and ck["args"]["objective"] == "flow" and "diffusion" not in ck
    assert ck["objective"]["objective"] == "flow" and ck["objective"]["time_shift"] == 0.125
    assert (full / "samples.png").stat().st_size > 0  # the end-of-run grid, sampled with Euler
    assert [float(r["vb"]) for r in csv.DictReader(open(full / "losses.csv"))] == [0.0] * 4

    assert train.main(tiny_args(part, *common, "--max-steps", "2")) == 0
    assert train.main(["--resume", str(part), "--max-steps", "4"]) == 0
    assert read_losses(full) == read_losses(part)  # bit-identical continuation
    fb = load_checkpoint(part / "checkpoints" / "0000004.pt")
    assert all(torch.equal(v, fb["ema"][k]) for k, v in ck["ema"].items())

    out = tmp_path / "samples"
    assert sample.main(["--ckpt", str(full), "--sampler", "heun", "--steps", "3", "--cfg-interval", "0", "0.5",
                        "--num-samples", "4", "--out", str(out), "--backend", "torch"]) == 0
    assert len(list((out / "images").glob("*.png"))) == 4
    with pytest.raises(SystemExit, match="--sampler ddpm does not fit the run's flow objective"):
        sample.main(["--ckpt", str(full), "--sampler", "ddpm", "--out", str(tmp_path / "x")])


def test_train_resume_refuses_another_objective(tmp_path):
    run = tmp_path / "run"
    assert train.main(tiny_args(run, "--max-steps", "1")) == 0
    with pytest.raises(SystemExit, match="cannot resume with --objective flow: the checkpoint was trained with eps"):
        train.main(["--resume", str(run), "--objective", "flow"])
    ck = load_checkpoint(run / "checkpoints" / "0000001.pt")
    config = TrainConfig.from_dict({**ck["args"], "objective": "flow", "sample_sampler": None, "resume": None})
    with pytest.raises(ValueError, match="cannot resume with --objective flow: the checkpoint was trained with eps"):
        Trainer(config, tmp_path / "other", resume=ck)


def _as_format_1(path):
    """Rewrite the checkpoint at ``path`` as train.py wrote it before the objective had one name
    (format xswin_fast.train/1): its config under "diffusion", its name under "objective", and
    the run config's --num-timesteps as "diffusion_steps"."""
    ck = load_checkpoint(path)
    config = ck.pop("objective")
    ck["diffusion"], ck["objective"] = config, config.get("objective", "eps")
    ck["args"] = {("diffusion_steps" if k == "num_timesteps" else k): v for k, v in ck["args"].items()}
    ck["format"] = "xswin_fast.train/1"
    save_checkpoint(ck, path)


@pytest.mark.parametrize("objective", ["eps", "flow"])
def test_a_format_1_checkpoint_samples_and_resumes_exactly(tmp_path, objective):
    from xswin_fast.runs.run_dir import load_run

    common = ["--objective", objective, "--lr-schedule", "constant", "--ckpt-every", "2", "--num-timesteps", "500"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert train.main(tiny_args(full, *common, "--max-steps", "4")) == 0
    assert train.main(tiny_args(part, *common, "--max-steps", "2")) == 0
    _as_format_1(part / "checkpoints" / "0000002.pt")
    old = load_checkpoint(part / "checkpoints" / "0000002.pt")
    assert old["format"] == "xswin_fast.train/1" and old["objective"] == objective and "num_timesteps" not in old["args"]

    run = load_run(str(part), "cpu", backend="torch")
    assert (run.objective.name, run.objective.num_timesteps) == (objective, 500)
    assert train.main(["--resume", str(part), "--max-steps", "4"]) == 0
    assert read_losses(full) == read_losses(part)  # bit-identical continuation
    new = load_checkpoint(part / "checkpoints" / "0000004.pt")
    assert new["format"] == "xswin_fast.train/2" and new["args"]["num_timesteps"] == 500
    assert new["objective"] == load_checkpoint(full / "checkpoints" / "0000004.pt")["objective"]


def test_train_nan_loss_stops_at_the_step_that_produced_it(tmp_path, monkeypatch, caplog):
    # logs are flushed every 100 steps: the NaN of step 5 must still stop the run at step 5
    calls = {"n": 0}
    original = Diffusion.training_losses

    def poisoned(self, *args, **kwargs):
        terms = original(self, *args, **kwargs)
        if terms["loss"].shape[0] == 16:  # a training batch, not the checkpoint's probe batch of 4
            calls["n"] += 1
            if calls["n"] == 5:
                terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(Diffusion, "training_losses", poisoned)
    run = tmp_path / "run"
    with caplog.at_level("ERROR", logger="xswin_fast"):
        rc = train.main(tiny_args(run, "--max-steps", "10", "--ckpt-every", "2", "--log-every", "100"))
    assert rc == 2 and calls["n"] == 5
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["0000002.pt", "0000004.pt"]
    assert [s for s, _ in read_losses(run)] == [1, 2, 3, 4]
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0]
    assert "loss is nan at step 5" in errors[0] and "0000004.pt" in errors[0]


def _loss_on_digits(checkpoint):
    """The eps training loss of ``checkpoint``'s weights on 64 digits at fixed noise and timesteps."""
    from xswin_fast.data import DigitsDataset
    from xswin_fast.runs.run_dir import load_run

    state, data = load_run(str(checkpoint), "cpu", use_ema=False, backend="torch"), DigitsDataset()
    x0, y = torch.stack([data[i][0] for i in range(64)]), torch.tensor([data[i][1] for i in range(64)])
    g = torch.Generator().manual_seed(0)
    noise, t = torch.randn(x0.shape, generator=g), torch.randint(0, 1000, (64,), generator=g)
    x_t = state.objective.add_noise(x0, noise, t)
    with torch.no_grad():
        return state.objective.training_losses(state.model(x_t, t, y), x0, x_t, t, noise)["loss"].mean().item()


@pytest.mark.parametrize("start", ["fresh", "resumed"])
def test_train_a_diverged_run_keeps_only_resumable_checkpoints(tmp_path, caplog, start):
    # resumable: a kept checkpoint's loss on the training data is that of a model that learns (about
    # 1), not of a diverged one (1e32 after one step at lr 3, though every weight is finite)
    run, diverge = tmp_path / "run", ["--lr", "3", "--max-grad-norm", "0", "--ckpt-every", "1"]
    if start == "resumed":
        assert train.main(tiny_args(run, "--max-steps", "2", "--ckpt-every", "1", "--lr-schedule", "constant")) == 0
    caplog.clear()
    with caplog.at_level("ERROR", logger="xswin_fast"):
        argv = ["--resume", str(run), "--max-steps", "8", *diverge] if start == "resumed" else tiny_args(run, "--max-steps", "8", *diverge)
        assert train.main(argv) == 2
    error = " ".join(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    kept = list_checkpoints(run / "checkpoints")
    for path in kept:
        loss = _loss_on_digits(path)
        assert math.isfinite(loss) and loss < 100, (path.name, loss)
    assert (kept[-1].name if kept else "none (no checkpoint was written yet)") in error
    assert "diverged" in error or "non-finite" in error


def test_train_step_refuses_a_batch_that_is_neither_images_nor_cached_latents(tmp_path):
    from xswin_fast.runs.training_data import CachedLatents, LatentBatch

    config = TrainConfig(model_kwargs=json.loads(TINY_DIGITS), backend="torch", global_batch_size=16, threads=1, progress=False)
    trainer = Trainer(config, tmp_path)
    x, y = next(iter(trainer.data.loader))
    with pytest.raises(TypeError, match="LatentBatch"):
        trainer.train_step((x, y, y))  # a third element no longer means cached latents
    cache = type("Cache", (), {"kind": "latents", "targets": [0, 1], "__len__": lambda self: 2,
                               "__getitem__": lambda self, i: (torch.zeros(4, 2, 2), torch.ones(4, 2, 2), i)})()
    batch = torch.utils.data.default_collate([CachedLatents(cache)[i] for i in range(2)])
    assert isinstance(batch, LatentBatch) and batch.mean.shape == (2, 4, 2, 2) and batch.labels.tolist() == [0, 1]
