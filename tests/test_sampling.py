"""sample.py and xswin_fast.sampling.generate on a tiny digits checkpoint."""
import json

import pytest
import torch

from xswin_fast.cli import sample
from xswin_fast.runs.run_dir import load_run
from xswin_fast.sampling import generate


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
        return generate(run.model, run.diffusion, [0, 1, 2], run.latent_shape, codec=run.codec, sampler="ddpm", steps=3,
                        cfg_scale=2.0, seed=seed)

    a, b, c = draw(5), draw(5), draw(6)
    assert a.dtype == torch.uint8 and a.shape == (3, 1, 8, 8)
    assert torch.equal(a, b) and not torch.equal(a, c)
