"""XSwinPipeline: class-conditional generation with a backbone, a diffusers scheduler and an
optional VAE; every scheduler family, rectangular sizes, guidance, learned sigma, names, and the
whole pipeline through save_pretrained / from_pretrained. Tiny random models, no hub."""
import functools

import pytest
import torch
from PIL import Image

from families import tiny
from helpers import randomize_
from xswin_fast import DiT, USwin, XSwin
from xswin_fast.pipelines import XSwinPipeline  # first: it makes diffusers' pipelines importable
from diffusers import (  # noqa: E402
    AutoencoderKL, DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
)

SCHEDULERS = {
    "ddpm-learned-range": lambda: DDPMScheduler(variance_type="learned_range"),
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpm-solver++": lambda: DPMSolverMultistepScheduler(algorithm_type="dpmsolver++"),
    "euler": EulerDiscreteScheduler,
}


def pixel_pipeline(scheduler=None, **overrides) -> XSwinPipeline:
    """A pixel-space pipeline (no VAE) around a tiny 1-channel XSwin, as train.py's digits default."""
    model = randomize_(tiny(XSwin, in_channels=1, **overrides)).eval()
    return XSwinPipeline(model, scheduler or DDIMScheduler(), id2label={0: "zero", 1: "one, uno", 2: "two"})


def tiny_vae() -> AutoencoderKL:
    """A random 3-channel AutoencoderKL with 4 latent channels and a factor-2 downsampling."""
    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
        norm_num_groups=8, layers_per_block=1, sample_size=16,
    ).eval()


def run(pipe, seed=0, **kwargs):
    kwargs = {"class_labels": [0, 1], "num_inference_steps": 3, "output_type": "pt", **kwargs}
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs).images


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_samples_rectangular_images(name):
    pipe = pixel_pipeline(SCHEDULERS[name]())
    seen = []
    step = pipe.scheduler.step

    @functools.wraps(step)  # keeps the signature: the pipeline passes generator= where step takes it
    def recording_step(out, *args, **kwargs):
        seen.append(out.shape[1])
        return step(out, *args, **kwargs)

    pipe.scheduler.step = recording_step
    images = run(pipe, height=8, width=12)
    assert images.shape == (2, 1, 8, 12) and torch.isfinite(images).all()
    assert 0 <= images.min() and images.max() <= 1
    # learned sigma: DDPM's learned_range takes eps and the variance channels, the others eps only
    assert set(seen) == {2 if name == "ddpm-learned-range" else 1}
    assert torch.equal(run(pipe, height=8, width=12), images)
    assert not torch.equal(run(pipe, seed=1, height=8, width=12), images)


def test_ddim_matches_a_hand_written_guided_loop():
    pipe = pixel_pipeline()
    model, scheduler = pipe.transformer, pipe.scheduler
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 8, 8, generator=g)
    y = torch.tensor([0, 1, model.num_classes, model.num_classes])
    scheduler.set_timesteps(3)
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = model.forward_with_cfg(torch.cat([x, x]), t.expand(4), y, 2.5)[:2, :1]
            x = scheduler.step(eps, t, x).prev_sample
    expected = (x / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(run(pipe, guidance_scale=2.5), expected, rtol=0, atol=1e-6)


def test_guidance_covers_every_channel_unless_told():
    model = randomize_(tiny(USwin)).eval()
    pipe = XSwinPipeline(model, DDIMScheduler())
    all_channels = run(pipe, output_type="latent")
    three = run(pipe, output_type="latent", guided_channels=3)
    assert not torch.equal(all_channels, three)
    unguided = run(pipe, output_type="latent", guidance_scale=1.0)
    assert not torch.allclose(unguided, all_channels)


def test_a_vae_decodes_latents_to_pil_images():
    model = randomize_(tiny(XSwin)).eval()
    pipe = XSwinPipeline(model, EulerDiscreteScheduler(), vae=tiny_vae())
    assert pipe.vae_scale_factor == 2
    images = pipe(class_labels=[3, 4, 5], num_inference_steps=2, height=16, width=24).images
    assert len(images) == 3 and all(isinstance(im, Image.Image) and im.size == (24, 16) for im in images)
    arrays = run(pipe, output_type="np", height=16, width=16)
    assert arrays.shape == (2, 16, 16, 3)


def test_whole_pipeline_round_trips_through_a_folder(tmp_path):
    pipe = pixel_pipeline(DPMSolverMultistepScheduler(algorithm_type="dpmsolver++"))
    expected = run(pipe, height=8, width=12)
    pipe.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"model_index.json", "transformer", "scheduler"}
    loaded = XSwinPipeline.from_pretrained(tmp_path)
    loaded.transformer.set_backend("torch")  # as tiny() did (the backend is not part of the config)
    assert type(loaded.transformer) is XSwin and loaded.vae is None
    assert type(loaded.scheduler) is DPMSolverMultistepScheduler
    assert loaded.get_label_ids(["uno", "two"]) == [1, 2] and loaded.config.id2label == pipe.config.id2label
    assert torch.equal(run(loaded, height=8, width=12), expected)

    with_vae = XSwinPipeline(randomize_(tiny(DiT)).eval(), DDIMScheduler(), vae=tiny_vae())
    with_vae.save_pretrained(tmp_path / "latent")
    again = XSwinPipeline.from_pretrained(tmp_path / "latent")
    again.transformer.set_backend("torch")
    assert type(again.transformer) is DiT and type(again.vae) is AutoencoderKL
    assert torch.equal(run(again), run(with_vae))


def test_bad_requests_are_clear_errors():
    pipe = pixel_pipeline()
    with pytest.raises(ValueError, match=r"class_labels .* \[0, 10\)"):
        run(pipe, class_labels=[0, 10])
    with pytest.raises(ValueError, match="unknown labels"):
        pipe.get_label_ids("three")
    with pytest.raises(ValueError, match="output_type"):
        run(pipe, output_type="jpeg")
    with pytest.raises(ValueError, match="null class"):
        run(pixel_pipeline(class_dropout_prob=0.0))
    vae_pipe = XSwinPipeline(randomize_(tiny(DiT)).eval(), DDIMScheduler(), vae=tiny_vae())
    with pytest.raises(ValueError, match="multiples of the VAE's factor 2"):
        run(vae_pipe, height=15)
    with pytest.raises(ValueError, match="built for 8x8 latents"):
        run(vae_pipe, height=16, width=24)
