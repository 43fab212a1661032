"""XSwinPipeline with a text model: prompts and negative prompts, saved and loaded as one diffusers
folder with its text encoder and tokenizer, the same images after the round trip."""
import pytest
import torch

from families import tiny
from text_helpers import TEXT_DIM, tiny_encoder
from xswin_fast.models import DiT, XSwin
from xswin_fast.pipelines import XSwinPipeline  # first: it makes torchvision importable (xswin_fast.compat)
from xswin_fast.text import TextEncoder
from diffusers import DDPMScheduler, DiffusionPipeline  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    enc = TextEncoder.from_pretrained(tiny_encoder(tmp_path_factory.mktemp("enc") / "t5", "t5"), max_length=12)
    # the torch backend: the pipeline is under test here, the interpreted kernels elsewhere
    model = tiny(XSwin, num_classes=0, text_dim=TEXT_DIM, in_channels=1).eval().set_backend("torch")
    for p in model.parameters():  # away from the zero initialisation, so that the prompt matters
        torch.nn.init.normal_(p, std=0.05)
    return XSwinPipeline(model, DDPMScheduler(num_train_timesteps=50), text_encoder=enc.model, tokenizer=enc.tokenizer,
                         text_max_length=12)


def _images(pipe, **kw):
    args = dict(prompt=["the number seven", "a blurry 1"], guidance_scale=3.0, num_inference_steps=3, output_type="pt",
                generator=torch.Generator().manual_seed(0))
    return pipe(**{**args, **kw}).images


def test_round_trip_keeps_encoder_tokenizer_and_images(pipe, tmp_path):
    before = _images(pipe, negative_prompt="a blurry 7")
    pipe.save_pretrained(tmp_path / "p")
    for name in ("text_encoder", "tokenizer", "transformer", "scheduler"):
        assert (tmp_path / "p" / name).is_dir()
    loaded = XSwinPipeline.from_pretrained(tmp_path / "p")
    loaded.transformer.set_backend("torch")
    assert loaded.config.text_max_length == 12 and type(loaded.text_encoder).__name__ == "T5EncoderModel"
    assert torch.equal(_images(loaded, negative_prompt="a blurry 7"), before)
    generic = DiffusionPipeline.from_pretrained(tmp_path / "p")
    generic.transformer.set_backend("torch")
    assert type(generic) is XSwinPipeline and torch.equal(_images(generic, negative_prompt="a blurry 7"), before)


def test_prompts_negative_prompts_and_images_per_prompt(pipe):
    with_negative, with_null = _images(pipe, negative_prompt="a blurry 7"), _images(pipe)
    assert with_negative.shape == (2, 1, 8, 8) and (with_negative - with_null).abs().max() > 0
    per = _images(pipe, num_images_per_prompt=2, negative_prompt=["a blurry 7", "one"])
    assert per.shape == (4, 1, 8, 8)
    unguided = _images(pipe, guidance_scale=1.0)
    assert unguided.shape == (2, 1, 8, 8)


def test_bad_text_calls(pipe):
    with pytest.raises(ValueError, match="class_labels need a class model"):
        pipe(class_labels=[1])
    with pytest.raises(TypeError, match="prompt must be"):
        pipe(prompt=[])
    with pytest.raises(ValueError, match="negative_prompt acts through guidance"):
        _images(pipe, negative_prompt="x", guidance_scale=1.0)
    with pytest.raises(ValueError, match="one str or one per prompt"):
        _images(pipe, negative_prompt=["x", "y", "z"])
    class_pipe = XSwinPipeline(tiny(DiT).eval(), DDPMScheduler(num_train_timesteps=50))
    with pytest.raises(ValueError, match="need a text model"):
        class_pipe(prompt="a seven", num_inference_steps=2)
    with pytest.raises(ValueError, match="needs a text_encoder and a tokenizer"):
        XSwinPipeline(pipe.transformer, pipe.scheduler)
    with pytest.raises(ValueError, match="needs a text_encoder and a tokenizer"):
        XSwinPipeline(tiny(DiT), pipe.scheduler, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
