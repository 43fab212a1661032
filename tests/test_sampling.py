"""sample.py and xswin_fast.objectives.sampling.generate on a tiny digits checkpoint."""
import json

import pytest
import torch

from xswin_fast.cli import sample
from xswin_fast.runs.run_dir import load_run
from xswin_fast.objectives.sampling import generate


@pytest.mark.parametrize("sampler,extra", [("ddim", ["--cfg-scale", "3.0"]), ("ddpm", ["--no-ema", "--labels", "3,7"])])
def test_sample_writes_grid_and_png_folder(digits_run, tmp_path, sampler, extra):
    out = tmp_path / "samples"
    rc = sample.main(["--ckpt", str(digits_run), "--num-samples", "12", "--steps", "4", "--sampler", sampler,
                        "--seed", "1", "--out", str(out), "--backend", "torch", *extra])
    assert rc == 0
    pngs = sorted((out / "images").glob("*.png"))
    assert len(pngs) == 12 and (out / "grid.png").stat().st_size > 0
    labels = json.loads((out / "labels.json").read_text())["labels"]
    assert labels == ([3, 7] * 6 if "--labels" in extra else [i % 10 for i in range(12)])
    from PIL import Image

    with Image.open(pngs[0]) as im:
        assert im.size == (8, 8) and im.mode == "L"


def test_sample_is_deterministic_for_a_seed(digits_run):
    run = load_run(str(digits_run), "cpu", backend="torch")

    def draw(seed):
        return generate(run.model, run.objective, [0, 1, 2], run.latent_shape, codec=run.codec, sampler="ddpm", steps=3,
                        cfg_scale=2.0, seed=seed)

    a, b, c = draw(5), draw(5), draw(6)
    assert a.dtype == torch.uint8 and a.shape == (3, 1, 8, 8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sample_progress_lines_show_k_of_n_elapsed_and_eta(digits_run, caplog):
    run = load_run(str(digits_run), "cpu", backend="torch")
    with caplog.at_level("INFO", logger="xswin_fast"):
        generate(run.model, run.objective, list(range(5)), run.latent_shape, sampler="ddpm", steps=3, batch_size=2,
                 progress="log")
    last = [r.getMessage() for r in caplog.records if "denoising steps" in r.getMessage()][-1]
    assert last.startswith("sampling 5 images (ddpm, 3 steps): 9/9 denoising steps (100%), elapsed ")
    assert "ETA 0 s" in last


def test_one_cfg_default_and_threads_auto_for_every_command_line():
    from xswin_fast.cli import evaluate
    from xswin_fast.runs.config import TrainConfig, build_parser
    from xswin_fast.objectives.sampling import DEFAULT_CFG_SCALE

    for parser in (sample.build_parser(), evaluate.build_parser()):
        defaults = {a.dest: a.default for a in parser._actions}
        assert defaults["cfg_scale"] == DEFAULT_CFG_SCALE and defaults["threads"] == "auto"
    assert TrainConfig().sample_cfg == DEFAULT_CFG_SCALE
    assert f"default {DEFAULT_CFG_SCALE:g}" in next(a.help for a in build_parser()._actions if a.dest == "sample_cfg")
