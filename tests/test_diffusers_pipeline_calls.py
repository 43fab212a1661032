"""XSwinPipeline's call as diffusers' pipelines make it (what diffusers' PipelineTesterMixin asks
of one): caller's latents, num_images_per_prompt, the pt / np / pil / latent outputs agreeing,
a batch matching its single runs, step-end callbacks (reading, replacing the latents, changing the
guidance scale, interrupting); every bad argument a TypeError/ValueError naming it; and
DiffusionPipeline.from_pretrained on a saved folder. Tiny random pixel-space models."""
import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from families import tiny
from helpers import randomize_
from xswin_fast import XSwin
from xswin_fast.pipelines import XSwinPipeline
from diffusers import DiffusionPipeline  # noqa: E402  (after xswin_fast.pipelines registers its class)


def pixel_pipeline(scheduler=None) -> XSwinPipeline:
    model = randomize_(tiny(XSwin, in_channels=1)).eval()
    pipe = XSwinPipeline(model, scheduler or DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, seed=0, **kwargs):
    kwargs = {"class_labels": [0, 1], "num_inference_steps": 2, "output_type": "pt", **kwargs}
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs).images


def test_caller_latents_replace_the_drawn_noise():
    pipe = pixel_pipeline()
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(run(pipe, latents=noise.clone()), run(pipe))  # the same noise the generator draws
    other = torch.randn(2, 1, 8, 8)
    assert not torch.equal(run(pipe, latents=other), run(pipe))
    with pytest.raises(ValueError, match=r"latents must have shape \(2, 1, 8, 8\)"):
        run(pipe, latents=torch.randn(1, 1, 8, 8))
    with pytest.raises(TypeError, match="latents must be a floating-point tensor"):
        run(pipe, latents=np.zeros((2, 1, 8, 8)))


def test_num_images_per_prompt_repeats_each_label_in_place():
    pipe = pixel_pipeline(DDPMScheduler())
    labels = []
    forward = pipe.transformer.forward

    def recording_forward(x, t, y, *args, **kwargs):
        labels.append(y.tolist())
        return forward(x, t, y, *args, **kwargs)

    pipe.transformer.forward = recording_forward
    images = run(pipe, class_labels=[0, 2], num_images_per_prompt=3, guidance_scale=1.0)
    assert images.shape == (6, 1, 8, 8) and labels[0] == [0, 0, 0, 2, 2, 2]
    with pytest.raises(TypeError, match="num_images_per_prompt must be an int"):
        run(pipe, num_images_per_prompt=1.5)
    with pytest.raises(ValueError, match="num_images_per_prompt must be >= 1"):
        run(pipe, num_images_per_prompt=0)


def test_a_batch_matches_its_single_runs_with_one_generator_each():
    pipe = pixel_pipeline(DDPMScheduler())  # DDPM draws noise in every step too
    gens = lambda: [torch.Generator().manual_seed(s) for s in range(3)]  # noqa: E731
    batch = pipe(class_labels=[1, 1, 1], num_inference_steps=2, generator=gens(), output_type="pt").images
    for seed in range(3):
        single = run(pipe, seed=seed, class_labels=[1])
        torch.testing.assert_close(batch[seed:seed + 1], single, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="a list of 3 .* got a list of 2"):
        pipe(class_labels=[1, 1, 1], num_inference_steps=2, generator=gens()[:2])


def test_pt_np_pil_and_latent_outputs_agree():
    pipe = pixel_pipeline()
    pt = run(pipe)
    np_images = run(pipe, output_type="np")
    pil = run(pipe, output_type="pil")
    latent = run(pipe, output_type="latent")
    assert isinstance(np_images, np.ndarray) and np_images.shape == (2, 8, 8, 1)
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), np_images, rtol=0, atol=1e-6)
    assert len(pil) == 2 and np.abs(np.asarray(pil[0], dtype=np.float64) - (np_images[0, ..., 0] * 255).round()).max() < 2
    torch.testing.assert_close((latent / 2 + 0.5).clamp(0, 1), pt)


def test_step_end_callback_sees_and_replaces_the_latents():
    pipe = pixel_pipeline()
    seen = []

    def record(p, i, t, kwargs):
        assert p is pipe and set(kwargs) == {"latents"}
        seen.append((i, int(t), kwargs["latents"].clone()))
        return kwargs

    out = run(pipe, output_type="latent", callback_on_step_end=record)
    assert [i for i, _, _ in seen] == [0, 1] and pipe.num_timesteps == 2
    assert [t for _, t, _ in seen] == pipe.scheduler.timesteps.tolist()
    assert torch.equal(seen[-1][2], out)

    def zero_last(p, i, t, kwargs):
        if i == p.num_timesteps - 1:
            kwargs["latents"] = torch.zeros_like(kwargs["latents"])
        return kwargs

    assert run(pipe, output_type="latent", callback_on_step_end=zero_last).abs().sum() == 0
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs must be among"):
        run(pipe, callback_on_step_end=record, callback_on_step_end_tensor_inputs=["prompt_embeds"])
    with pytest.raises(TypeError, match="callback_on_step_end must be callable"):
        run(pipe, callback_on_step_end="record")


def test_callback_changes_the_guidance_scale_and_can_interrupt():
    pipe = pixel_pipeline()

    def raise_guidance(p, i, t, kwargs):
        p._guidance_scale += 1.0
        return kwargs

    stepped = run(pipe, guidance_scale=2.0, callback_on_step_end=raise_guidance)
    assert pipe.guidance_scale == 2.0 + pipe.num_timesteps
    assert not torch.equal(stepped, run(pipe, guidance_scale=2.0))

    seen = []

    def stop(p, i, t, kwargs):
        seen.append(kwargs["latents"].clone())
        p._interrupt = True
        return kwargs

    out = run(pipe, num_inference_steps=3, output_type="latent", callback_on_step_end=stop)
    assert len(seen) == 1 and torch.equal(out, seen[0])  # the remaining two steps skipped


@pytest.mark.parametrize("value, error, match", [
    (-1, ValueError, "num_inference_steps must be >= 1"),
    (0, ValueError, "num_inference_steps must be >= 1"),
    (2000, ValueError, "num_inference_steps must be at most the scheduler's num_train_timesteps 1000"),
    (2.5, TypeError, "num_inference_steps must be an int"),
    ("2", TypeError, "num_inference_steps must be an int"),
    (True, TypeError, "num_inference_steps must be an int"),
])
def test_bad_step_counts_are_refused(value, error, match):
    with pytest.raises(error, match=match):
        run(pixel_pipeline(), num_inference_steps=value)


@pytest.mark.parametrize("value, error", [
    (float("nan"), ValueError), (float("inf"), ValueError), (0.5, ValueError), ("4", TypeError), (None, TypeError),
])
def test_bad_guidance_scales_are_refused_by_their_name(value, error):
    with pytest.raises(error, match="guidance_scale") as info:
        run(pixel_pipeline(), guidance_scale=value)
    assert "cfg_scale" not in str(info.value)


@pytest.mark.parametrize("value, error", [
    ("3", TypeError), (None, TypeError), ([0.5], ValueError), ([], ValueError), ([[0, "a"]], TypeError),
])
def test_bad_class_labels_are_refused_by_their_name(value, error):
    with pytest.raises(error, match="class_labels"):
        run(pixel_pipeline(), class_labels=value)


def test_bad_sizes_are_refused_by_their_name():
    with pytest.raises(ValueError, match="height must be >= 1"):
        run(pixel_pipeline(), height=0)
    with pytest.raises(TypeError, match="width must be an int"):
        run(pixel_pipeline(), width=8.0)


def test_diffusion_pipeline_from_pretrained_loads_a_saved_folder(tmp_path):
    pipe = pixel_pipeline()
    pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["_class_name"] == "XSwinPipeline"
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    assert type(loaded) is XSwinPipeline
    loaded.transformer.set_backend("torch")
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(run(loaded), run(pipe))
