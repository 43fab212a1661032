"""The typed run config: flags generated from it, defaults, config.json round trip, resume merge;
the one preset registry behind --model."""
import argparse
import json
from dataclasses import fields
from pathlib import Path
from typing import Optional

import pytest

from xswin_fast import create_model, list_models
from xswin_fast.runs.config import (
    RENAMED,
    ConfigError,
    Resume,
    TrainConfig,
    build_parser,
    defaults_for,
    new_run_config,
    parse_flags,
    resume_config,
)


def _action(parser: argparse.ArgumentParser, dest: str) -> argparse.Action:
    return next(a for a in parser._actions if a.dest == dest)


def test_every_field_is_a_flag_whose_help_comes_from_the_config():
    parser = build_parser()
    for f in fields(TrainConfig):
        action = _action(parser, f.name)
        assert action.option_strings[0] == "--" + f.name.replace("_", "-")
        assert action.help.startswith(f.metadata["help"].replace("%", "%%")), f.name
    lr = _action(parser, "lr").help
    assert "default 0.002 (digits) / 0.0001 (--data)" in lr
    assert _action(parser, "sample_sampler").choices == ("ddpm", "ddim", "euler", "heun")  # eps, then flow samplers


def test_model_choices_are_the_registry():
    assert list(_action(build_parser(), "model").choices) == list_models()
    with pytest.raises(SystemExit):
        parse_flags(["--model", "XSwin-Z/3"])


def test_registry_holds_the_digits_preset():
    assert "XSwin-digits" in list_models()
    model = create_model("XSwin-digits")
    assert model.in_channels == 1 and model.out_channels == 2 and model.num_classes == 10
    assert 0.7e6 < sum(p.numel() for p in model.parameters()) < 0.8e6  # docs/training.md: 0.75M


def test_parse_flags_returns_only_what_was_typed():
    flags = parse_flags(["--lr", "3e-4", "--no-hflip", "--vae", "none", "--model-kwargs", '{"embed_dim": 8}', "--threads", "2"])
    assert flags == {"lr": 3e-4, "hflip": False, "vae": None, "model_kwargs": {"embed_dim": 8}, "threads": 2}
    for bad in (["--model-kwargs", "[1]"], ["--model-kwargs", "{"], ["--threads", "-1"], ["--threads", "many"]):
        with pytest.raises(SystemExit):
            parse_flags(bad)


def test_new_run_defaults_depend_on_data(tmp_path):
    digits = new_run_config({})
    assert digits == TrainConfig(progress=digits.progress)  # the field defaults are the digits job
    assert (digits.model, digits.lr, digits.max_steps, digits.threads, digits.vae) == ("XSwin-digits", 2e-3, 1500, "auto", None)
    data = new_run_config({"data": str(tmp_path), "lr": 5e-4})
    assert (data.model, data.lr, data.max_steps, data.threads, data.vae, data.hflip) == ("XSwin-S/2", 5e-4, None, 0, "ema", True)
    assert data.data == str(tmp_path) and defaults_for(str(tmp_path))["global_batch_size"] == 256


@pytest.mark.parametrize("flags,message", [
    ({"cache_latents": True}, "--cache-latents needs a --vae"),
    ({"vae": "ema"}, "pixel space"),
    ({"log_every": 0}, "--log-every must be >= 1"),
])
def test_new_run_refuses_settings_that_cannot_work(flags, message):
    with pytest.raises(ConfigError, match=message):
        new_run_config(flags)


def test_config_json_round_trip(tmp_path):
    config = new_run_config({"model_kwargs": {"depths": [1, 1]}, "threads": 3, "progress": False})
    config.save(tmp_path / "config.json")
    assert TrainConfig.load(tmp_path / "config.json") == config
    assert json.loads((tmp_path / "config.json").read_text())["model_kwargs"] == {"depths": [1, 1]}
    with pytest.raises(ConfigError, match="unknown"):
        TrainConfig.from_dict({**config.to_dict(), "learning_rate": 1.0})


def test_old_config_json_still_loads(tmp_path):
    # the keys a run folder's config.json held before the typed config (train.py of 2026-11)
    old = {
        "data": None, "image_size": 8, "eval_fraction": 0.2, "hflip": False, "num_workers": 0, "vae": None,
        "vae_subfolder": None, "cache_latents": False, "latent_cache_dir": None, "model": "XSwin-digits",
        "model_kwargs": {"input_size": 8, "in_channels": 1, "num_classes": 10}, "backend": "auto",
        "grad_checkpointing": False, "compile": False, "diffusion_steps": 1000, "beta_schedule": "linear",
        "global_batch_size": 64, "lr": 0.002, "weight_decay": 0.0, "lr_warmup_steps": 100, "lr_schedule": "cosine",
        "max_grad_norm": 1.0, "epochs": 1000, "max_steps": 1500, "ema_decay": 0.9999, "ema_warmup": True,
        "precision": "auto", "tf32": True, "global_seed": 0, "threads": 1, "device": "auto", "results_dir": "results",
        "run_dir": None, "log_every": 100, "ckpt_every": 500, "keep_last": 0, "sample_every": 500, "sample_num": 100,
        "sample_steps": 50, "sample_sampler": "ddpm", "sample_cfg": 2.5, "progress": True, "resume": None,
    }
    (tmp_path / "config.json").write_text(json.dumps(old))
    loaded = TrainConfig.load(tmp_path / "config.json").to_dict()
    current = {RENAMED.get(k, k): v for k, v in old.items()}
    assert "num_timesteps" in current and {k: loaded[k] for k in current} == current
    # settings added since take their defaults: an old run is an eps run
    assert {k: loaded[k] for k in set(loaded) - set(current)} == {
        "objective": "eps", "t_sampling": "uniform", "logit_mean": 0.0, "logit_std": 1.0, "time_shift": 1.0,
        "data_dir": None, "split_seed": None, "captions": None, "text_encoder": None, "text_encoder_dtype": None,
        "text_max_length": None, "caption_dropout": None, "text_cache_dir": None, "lr_decay_steps": None}


def test_resume_merge_keeps_saved_settings_and_warns_on_unsafe_changes(tmp_path, caplog):
    saved = new_run_config({"run_dir": str(tmp_path / "old"), "progress": False}).to_dict()
    ckpt = tmp_path / "run" / "checkpoints" / "0000010.pt"
    with caplog.at_level("WARNING"):
        config = resume_config(saved, {"resume": str(tmp_path / "run"), "max_steps": 20}, ckpt)
    assert not caplog.records  # max_steps is safe to change
    assert config.max_steps == 20 and config.lr == saved["lr"]
    assert config.resume == str(ckpt) and config.run_dir is None  # continue where the checkpoint is
    with caplog.at_level("WARNING"):
        config = resume_config(saved, {"lr": 1e-3, "run_dir": "elsewhere"}, ckpt)
    assert "['lr']" in caplog.text and config.lr == 1e-3 and config.run_dir == "elsewhere"


@pytest.mark.parametrize("flags,message", [
    ({"model": "DiT-S/2"}, "--model DiT-S/2"),
    ({"model_kwargs": {"embed_dim": 64}}, "--model-kwargs"),
    ({"data": "elsewhere"}, "--data"),
    ({"global_seed": 1}, "--global-seed 1: the checkpoint was trained with 0"),
    ({"num_timesteps": 500}, "--num-timesteps"),
])
def test_resume_refuses_settings_that_define_the_model_or_data(tmp_path, flags, message):
    saved = new_run_config({"progress": False}).to_dict()
    with pytest.raises(ConfigError, match=message):
        resume_config(saved, flags, tmp_path / "run" / "checkpoints" / "0000010.pt")
    assert resume_config(saved, {"global_seed": 0, "model": saved["model"]}, tmp_path / "c.pt").global_seed == 0


def test_docs_list_every_flag():
    text = (Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    missing = [f.name for f in fields(TrainConfig) if f"`--{f.name.replace('_', '-')}" not in text]
    assert not missing, missing


def test_flow_settings_and_the_sampler_of_each_objective():
    flow = new_run_config({"objective": "flow", "time_shift": 2.0, "t_sampling": "logit-normal", "progress": False})
    assert (flow.objective, flow.time_shift, flow.sample_sampler) == ("flow", 2.0, None)
    with pytest.raises(ConfigError, match="--time-shift auto"):  # SD3's rule is for latents: refused in pixel space
        new_run_config({"objective": "flow", "time_shift": "auto", "progress": False})
    assert parse_flags(["--time-shift", "3"]) == {"time_shift": 3.0}
    for bad in (["--time-shift", "0"], ["--time-shift", "nan"], ["--objective", "v"], ["--t-sampling", "beta"]):
        with pytest.raises(SystemExit):
            parse_flags(bad)
    with pytest.raises(ConfigError, match="--sample-sampler heun does not fit --objective eps"):
        new_run_config({"sample_sampler": "heun"})
    with pytest.raises(ConfigError, match="--sample-sampler ddpm does not fit --objective flow"):
        new_run_config({"objective": "flow", "sample_sampler": "ddpm"})
    with pytest.raises(ConfigError, match="--time-shift"):
        TrainConfig(time_shift=-1.0)


def test_resume_refuses_another_objective_and_old_runs_are_eps(tmp_path):
    saved = new_run_config({"progress": False}).to_dict()
    old = {k: v for k, v in saved.items() if k not in ("objective", "t_sampling", "logit_mean", "logit_std", "time_shift")}
    ckpt = tmp_path / "run" / "checkpoints" / "0000010.pt"
    assert resume_config(old, {"objective": "eps"}, ckpt).objective == "eps"  # a checkpoint from before flow matching
    with pytest.raises(ConfigError, match="cannot resume with --objective flow: the checkpoint was trained with eps"):
        resume_config(old, {"objective": "flow"}, ckpt)


def test_every_setting_declares_what_a_resume_may_do():
    kinds = {f.name: f.metadata.get("resume") for f in fields(TrainConfig)}
    assert all(isinstance(kind, Resume) for kind in kinds.values()), kinds
    # the settings that define the model, its data or its noise schedule are fixed
    for name in ("model", "model_kwargs", "data", "image_size", "eval_fraction", "vae", "num_timesteps", "objective"):
        assert kinds[name] is Resume.FIXED, name
    assert kinds["max_steps"] is Resume.FREE and kinds["lr"] is Resume.WARN


@pytest.mark.parametrize("name", [f.name for f in fields(TrainConfig) if f.name != "resume"])
def test_a_resume_does_with_each_setting_what_it_declares(tmp_path, caplog, name):
    saved = new_run_config({"progress": False}).to_dict()
    field = next(f for f in fields(TrainConfig) if f.name == name)
    other = _another_value(saved[name], field.type)
    kind = field.metadata["resume"]
    ckpt = tmp_path / "run" / "checkpoints" / "0000010.pt"
    caplog.clear()
    with caplog.at_level("WARNING"):
        if kind is Resume.FIXED:
            with pytest.raises(ConfigError, match=f"cannot resume with --{name.replace('_', '-')}"):
                resume_config(saved, {name: other}, ckpt)
            return
        try:
            resume_config(saved, {name: other}, ckpt)
        except ConfigError:  # the changed value does not fit another setting: not what is tested here
            pass
    assert (f"'{name}'" in caplog.text) == (kind is Resume.WARN)


def _another_value(value, annotation=None):
    """A value of the same kind that differs from ``value`` (None -> 7 for an optional int, else a
    string)."""
    if value is None and annotation == Optional[int]:
        return 7
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, dict):
        return {**value, "embed_dim": 16}
    return "other" if value is None or isinstance(value, str) else value


def test_an_old_run_config_resumes_under_the_new_names(tmp_path):
    saved = new_run_config({"progress": False}).to_dict()
    old = {("diffusion_steps" if k == "num_timesteps" else k): v for k, v in saved.items()}
    ckpt = tmp_path / "run" / "checkpoints" / "0000010.pt"
    assert resume_config(old, {"max_steps": 9}, ckpt).num_timesteps == saved["num_timesteps"]
    with pytest.raises(ConfigError, match="cannot resume with --num-timesteps 10"):
        resume_config(old, {"num_timesteps": 10}, ckpt)


def test_a_renamed_flag_is_refused_with_its_new_name(capsys):
    from xswin_fast.cli.user_errors import ArgumentParser

    with pytest.raises(SystemExit) as exc:
        parse_flags(["--diffusion-steps", "500"], parser_class=ArgumentParser)
    assert exc.value.code == 2
    assert "--diffusion-steps: this flag was renamed: type --num-timesteps 500" in capsys.readouterr().err
    assert parse_flags(["--num-timesteps", "500"]) == {"num_timesteps": 500}
    assert "--diffusion-steps" not in build_parser().format_help()
