"""A backbone inside diffusers' own DiTPipeline through DiTPipelineTransformer: end to end with a
tiny model and a tiny VAE, the same images as XSwinPipeline, and the pipeline saved and loaded."""
import pytest
import torch

from families import tiny
from helpers import randomize_
from test_diffusers_pipeline import tiny_vae
from xswin_fast import DiT, XSwin
from xswin_fast.pipelines import DiTPipelineTransformer, XSwinPipeline
from diffusers import DDIMScheduler, DiTPipeline  # noqa: E402

# DiTPipeline's null class is the constant 1000
IMAGENET = dict(num_classes=1000)


def generate(pipe, **kwargs):
    g = torch.Generator().manual_seed(0)
    return pipe(class_labels=[3, 999], num_inference_steps=3, generator=g, output_type="np", **kwargs).images


@pytest.mark.parametrize("cls", [DiT, XSwin], ids=lambda c: c.__name__)
def test_dit_pipeline_runs_a_backbone_and_agrees_with_xswin_pipeline(cls):
    model = randomize_(tiny(cls, **IMAGENET)).eval()
    transformer = DiTPipelineTransformer.from_backbone(model)
    assert transformer.backbone is model
    assert (transformer.config.sample_size, transformer.config.in_channels, transformer.config.out_channels) == (8, 4, 8)
    vae = tiny_vae()
    images = generate(DiTPipeline(transformer=transformer, vae=vae, scheduler=DDIMScheduler()), guidance_scale=3.0)
    assert images.shape == (2, 16, 16, 3)
    # the same sampler written once more: DiTPipeline guides every latent channel, as XSwinPipeline does
    ours = generate(XSwinPipeline(model, DDIMScheduler(), vae=vae), guidance_scale=3.0)
    torch.testing.assert_close(torch.from_numpy(images), torch.from_numpy(ours), rtol=0, atol=1e-5)


def test_dit_pipeline_with_the_adapter_round_trips_through_a_folder(tmp_path):
    model = randomize_(tiny(DiT, **IMAGENET)).eval()
    pipe = DiTPipeline(transformer=DiTPipelineTransformer.from_backbone(model), vae=tiny_vae(), scheduler=DDIMScheduler())
    expected = generate(pipe)
    pipe.save_pretrained(tmp_path)
    loaded = DiTPipeline.from_pretrained(tmp_path)
    assert type(loaded.transformer) is DiTPipelineTransformer and type(loaded.transformer.backbone) is DiT
    loaded.transformer.backbone.set_backend("torch")
    assert all(torch.equal(a, b) for a, b in zip(loaded.transformer.backbone.state_dict().values(), model.state_dict().values()))
    assert (generate(loaded) == expected).all()


def test_adapter_config_must_match_its_backbone():
    config = dict(tiny(DiT).config)
    with pytest.raises(ValueError, match="sample_size=16 does not match the backbone's 8"):
        DiTPipelineTransformer("DiT", config, sample_size=16)
    with pytest.raises(TypeError, match="DiffusionBackbone"):
        DiTPipelineTransformer.from_backbone(torch.nn.Linear(2, 2))
