"""Text-to-image training and sampling end to end on tiny configurations: every family trains a
few steps from a captioned folder with a tiny text encoder and samples from prompts (eps and flow
objectives); CFG with a negative prompt; the settings' refusals (one line in the CLIs); resume
refuses another text encoder."""
import json

import pytest
import torch

from families import FAMILIES, spec, tiny
from helpers import train_args
from text_helpers import TEXT_DIM, tiny_captioned_digits, tiny_encoder
from xswin_fast.models import DiT
from xswin_fast.objectives.guidance import TextCondition, model_output
from xswin_fast.pipelines import XSwinPipeline
from xswin_fast.runs.config import ConfigError, new_run_config, resume_config
from xswin_fast.text import TextEmbeddings

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
    return tiny_captioned_digits(tmp_path_factory.mktemp("captions") / "digits", n=24)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return tiny_encoder(tmp_path_factory.mktemp("encoder") / "bert")


def _text_run(run, captions, encoder, *extra):
    return train_args(run, "--captions", str(captions), "--text-encoder", encoder, "--vae", "none", "--image-size", "8",
                      "--global-batch-size", "8", "--sample-num", "2", "--sample-cfg", "2", "--num-workers", "0", *extra)


@pytest.mark.parametrize("objective", ["eps", "flow"])
@pytest.mark.parametrize("cls", FAMILIES, ids=lambda c: c.__name__)
def test_every_family_trains_and_samples_from_text(cls, objective, captions, encoder, tmp_path):
    from xswin_fast.cli import sample, train

    s, run = spec(cls), tmp_path / "run"
    assert train.main(_text_run(run, captions, encoder, "--model", s.cli_preset, "--model-kwargs", s.cli_model_kwargs,
                                "--objective", objective)) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["model_kwargs"]["text_dim"] == TEXT_DIM and saved["model_kwargs"]["num_classes"] == 0
    assert saved["text_encoder"] == encoder and saved["text_encoder_dtype"] == "fp32" and saved["caption_dropout"] == 0.1
    assert (run / "samples.txt").read_text().count("\n") == 2  # the grid's prompts beside it
    out = tmp_path / "samples"  # from the exported pipeline folder with its encoder (either objective)
    assert sample.main(["--ckpt", str(run / "model"), "--prompt", "the number seven", "--prompt", "a blurry 1", "--negative-prompt",
                        "a blurry 7", "--cfg-scale", "2", "--num-samples", "4", "--steps", "2", "--backend", "torch",
                        "--threads", "1", "--out", str(out)]) == 0
    assert len(list((out / "images").glob("*.png"))) == 4
    assert json.loads((out / "prompts.json").read_text())["prompts"][2] == "the number seven"
    pipe = XSwinPipeline.from_pretrained(run / "model")
    pipe.transformer.set_backend("torch")
    assert ("FlowMatch" in type(pipe.scheduler).__name__) == (objective == "flow")
    images = pipe(prompt=["the number seven"], negative_prompt="a blurry 7", guidance_scale=2.0, num_inference_steps=2,
                  output_type="pt").images
    assert images.shape == (1, 1, 8, 8) and torch.isfinite(images).all()


def test_evaluate_py_scores_a_text_run_from_its_held_out_captions(captions, encoder, tmp_path, capsys):
    from test_cli_errors import assert_one_line_error, run_cli
    from xswin_fast.cli import evaluate, train
    from xswin_fast.data.captions import read_captioned_folder

    run = tmp_path / "run"
    assert train.main(_text_run(run, captions, encoder, "--model-kwargs", spec(DiT).cli_model_kwargs, "--model",
                                spec(DiT).cli_preset, "--eval-fraction", "0.25")) == 0
    common = ["--ckpt", str(run), "--steps", "2", "--metrics", "fid", "--feature-extractor", "digits", "--threads", "1",
              "--backend", "torch", "--cfg-scale", "2"]
    assert evaluate.main([*common, "--num-samples", "8", "--negative-prompt", "a blurry 7", "--out", str(tmp_path / "ev")]) == 0
    split = json.loads((run / "split.json").read_text())
    folder = read_captioned_folder(str(captions))
    held_out = {c for name in split["eval"] for c in folder.captions[folder.files.index(name)]}
    prompts = json.loads((tmp_path / "ev" / "prompts.json").read_text())
    assert len(prompts["prompts"]) == 8 and set(prompts["prompts"]) <= held_out and prompts["negative_prompt"] == "a blurry 7"
    reference = json.loads((run / "eval" / "reference" / "captions.json").read_text())
    assert len(reference) == len(split["eval"]) == 6 and set(sum(reference.values(), [])) == held_out
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["num_generated"] == 8 and metrics["num_reference"] == 6 and metrics["negative_prompt"] == "a blurry 7"

    capsys.readouterr()  # what training and the first evaluation wrote
    plain = tmp_path / "plain"  # a reference without captions gives no prompts
    plain.mkdir()
    for p in (run / "eval" / "reference").glob("*.png"):
        (plain / p.name).write_bytes(p.read_bytes())
    assert_one_line_error(*run_cli(evaluate.main, [*common, "--ref", str(plain)], capsys), "captions.json", "--ref")
    assert_one_line_error(*run_cli(evaluate.main, [*common[:-2], "--cfg-scale", "1", "--negative-prompt", "x"], capsys), "--negative-prompt",
                          "--cfg-scale")


def test_the_fused_variant_trains_too(captions, encoder, tmp_path):
    from xswin_fast.cli import train

    kwargs = json.dumps({**json.loads(spec(DiT).cli_model_kwargs), "text_fusion": "fused"})
    assert train.main(_text_run(tmp_path / "run", captions, encoder, "--model", "DiT-digits", "--model-kwargs", kwargs)) == 0


def _text_model():
    model = tiny(DiT, num_classes=0, text_dim=8).eval()
    for p in model.parameters():  # away from the zero initialisation, so that text changes the output
        torch.nn.init.normal_(p, std=0.05)
    return model


def test_cfg_against_a_negative_prompt_or_the_null_caption():
    model = _text_model()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    prompts = TextEmbeddings(torch.randn(2, 3, 8), torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool), torch.randn(2, 8))
    negative = TextEmbeddings(torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool), torch.randn(2, 8))
    with torch.no_grad():
        cond = model(x, t, **prompts.model_kwargs())
        uncond_neg = model(x, t, **negative.model_kwargs())
        uncond_null = model(x, t, **TextEmbeddings.null(2, 8).model_kwargs())
        guided_neg = model_output(model, x, t, TextCondition(prompts, negative), 3.0, True)
        guided_null = model_output(model, x, t, TextCondition(prompts), 3.0, True)
        plain = model_output(model, x, t, TextCondition(prompts, negative), 3.0, False)
    C = model.in_channels
    torch.testing.assert_close(guided_neg[:, :C], uncond_neg[:, :C] + 3 * (cond[:, :C] - uncond_neg[:, :C]), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(guided_null[:, :C], uncond_null[:, :C] + 3 * (cond[:, :C] - uncond_null[:, :C]), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(plain, cond)
    assert (guided_neg - guided_null).abs().max() > 1e-3  # the negative prompt is not the null caption


def test_text_settings_need_captions_and_resume_refuses_another_encoder(captions, encoder):
    with pytest.raises(ConfigError, match="--caption-dropout applies to text-to-image runs"):
        new_run_config({"caption_dropout": 0.2})
    with pytest.raises(ConfigError, match="--captions and --data"):
        new_run_config({"captions": str(captions), "data": str(captions)})
    config = new_run_config({"captions": str(captions), "vae": None})
    assert config.text_encoder == "all-MiniLM-L6-v2" and config.text_encoder_dtype == "fp32" and config.text_max_length == 77
    saved = new_run_config({"captions": str(captions), "vae": None, "text_encoder": encoder}).to_dict()
    with pytest.raises(ConfigError, match="--text-encoder"):
        resume_config(saved, {"text_encoder": "all-MiniLM-L6-v2"}, "ckpt.pt")
    with pytest.raises(ConfigError, match="--text-encoder-dtype"):
        resume_config(saved, {"text_encoder_dtype": "bf16"}, "ckpt.pt")
    assert resume_config(saved, {"caption_dropout": 0.2}, "ckpt.pt").caption_dropout == 0.2
    with pytest.raises(ConfigError, match="applies to text-to-image runs"):
        resume_config(new_run_config({}).to_dict(), {"caption_dropout": 0.2}, "ckpt.pt")


def test_cli_mistakes_are_one_line(captions, encoder, tmp_path, capsys, digits_run):
    from xswin_fast.cli import sample, train

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metadata.jsonl").write_text('{"file_name": "x.png", "text": "a"}\n')
    for argv, message in (
        (["--caption-dropout", "0.2"], "--caption-dropout applies to text-to-image runs"),
        (["--captions", str(bad), "--vae", "none"], "line 1: image 'x.png' does not exist"),
        (_text_run(tmp_path / "r", captions, encoder, "--caption-dropout", "0"), "--sample-cfg 2 needs a model trained with --caption-dropout"),
        (["--captions", str(captions), "--vae", "none", "--text-encoder", str(tmp_path / "none")], "--text-encoder"),
    ):
        with pytest.raises(SystemExit) as info:
            train.main(argv)
        assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
    with pytest.raises(SystemExit) as info:
        sample.main(["--ckpt", str(digits_run), "--prompt", "a seven", "--num-samples", "1", "--out", str(tmp_path / "s")])
    assert "needs a text-to-image run" in str(info.value) and "\n" not in str(info.value)
