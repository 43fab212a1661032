"""Model folders are verified before they load: save_pretrained records each weights file's
SHA-256, from_pretrained checks it, and a missing, unreadable, incomplete or wrongly shaped
safetensors file, or a missing or invalid config.json, is a one-line OSError/ValueError naming the
folder and the file; a folder without recorded hashes still loads. Tiny models, local folders."""
import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import xswin_fast
from families import ASCEND_TINY, tiny
from helpers import randomize_
from xswin_fast import ASCEND, DiT
from xswin_fast.models.verified_weights import CHECKSUMS
from xswin_fast.pipelines import XSwinPipeline
from diffusers import DDIMScheduler  # noqa: E402

WEIGHTS = "diffusion_pytorch_model.safetensors"
LOADERS = {"class": lambda d: DiT.from_pretrained(d), "any family": lambda d: xswin_fast.from_pretrained(str(d))}
loader = pytest.mark.parametrize("load", LOADERS.values(), ids=LOADERS)


@pytest.fixture
def folder(tmp_path):
    model = randomize_(tiny(DiT)).eval()
    model.save_pretrained(tmp_path)
    return tmp_path


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def refuses(load, folder, error, match):
    with pytest.raises(error, match=match) as info:
        load(folder)
    message = str(info.value)
    assert "\n" not in message and str(folder) in message
    return message


def flip_a_data_byte(path):
    data = bytearray(path.read_bytes())
    data[-5] ^= 1  # the last tensor's data: the header still parses
    path.write_bytes(bytes(data))


def rewrite(path, edit):
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_save_records_the_hash_of_every_weights_file(folder, tmp_path):
    assert json.loads((folder / CHECKSUMS).read_text()) == {WEIGHTS: sha256(folder / WEIGHTS)}
    model = tiny(DiT)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    record = json.loads((tmp_path / "sharded" / CHECKSUMS).read_text())
    written = {p.name for p in (tmp_path / "sharded").iterdir()} - {"config.json", CHECKSUMS}
    assert set(record) == written and len(written) > 2
    assert all(record[name] == sha256(tmp_path / "sharded" / name) for name in written)
    # a second variant in the same folder keeps the first one's hash
    model.save_pretrained(folder, variant="fp16")
    record = json.loads((folder / CHECKSUMS).read_text())
    assert set(record) == {WEIGHTS, "diffusion_pytorch_model.fp16.safetensors"} and record[WEIGHTS] == sha256(folder / WEIGHTS)
    xswin_fast.from_pretrained(str(folder), variant="fp16")


@loader
def test_a_flipped_data_byte_is_caught_by_the_recorded_hash(load, folder):
    flip_a_data_byte(folder / WEIGHTS)
    refuses(load, folder, ValueError, f"{WEIGHTS} does not match the SHA-256 recorded")


def test_a_folder_without_recorded_hashes_still_loads(folder):
    # copied: a loaded model's tensors may map the file's pages
    saved = {k: v.clone() for k, v in DiT.from_pretrained(folder).state_dict().items()}
    (folder / CHECKSUMS).unlink()
    flip_a_data_byte(folder / WEIGHTS)  # nothing to compare with: it loads
    changed = xswin_fast.from_pretrained(str(folder))
    differ = [k for k, v in saved.items() if not torch.equal(changed.state_dict()[k], v)]
    assert len(differ) == 1


@loader
@pytest.mark.parametrize("edit, match", [
    (lambda sd: sd.pop("blocks.0.adaLN_modulation.1.bias"), r"missing: blocks\.0\.adaLN_modulation\.1\.bias"),
    (lambda sd: sd.update(extra=torch.zeros(2)), "unexpected: extra"),
    (lambda sd: sd.update({"final_layer.linear.bias": torch.zeros(3)}),
     r"wrongly shaped: final_layer\.linear\.bias \(3,\) \(expected \(32,\)\)"),
], ids=["missing", "unexpected", "reshaped"])
def test_weights_that_do_not_fit_the_config_are_refused(load, folder, edit, match):
    (folder / CHECKSUMS).unlink()  # as a folder written by another tool
    rewrite(folder / WEIGHTS, edit)
    refuses(load, folder, ValueError, "the weights do not fit the DiT that config.json builds .*" + match)


@loader
@pytest.mark.parametrize("damage", ["truncated", "random"])
def test_unreadable_safetensors_are_refused(load, folder, damage):
    (folder / CHECKSUMS).unlink()
    data = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(data[: len(data) // 2] if damage == "truncated" else bytes(range(256)) * 20)
    refuses(load, folder, ValueError, f"{WEIGHTS} is not a readable safetensors file")


@loader
def test_missing_files_and_bad_configs_are_named(load, folder):
    config = (folder / "config.json").read_text()
    (folder / "config.json").write_text("{not json")
    refuses(load, folder, ValueError, "config.json is not valid JSON")
    (folder / "config.json").write_text("[1, 2]")
    refuses(load, folder, ValueError, "config.json must hold a JSON object")
    (folder / "config.json").unlink()
    refuses(load, folder, OSError, "no config.json")
    (folder / "config.json").write_text(config)
    (folder / WEIGHTS).unlink()
    refuses(load, folder, OSError, f"no weights file \\({WEIGHTS} or diffusion_pytorch_model.bin\\)")


def test_a_missing_shard_is_named(tmp_path):
    tiny(DiT).save_pretrained(tmp_path, max_shard_size="20KB")
    shard = sorted(tmp_path.glob("diffusion_pytorch_model-*.safetensors"))[1]
    shard.unlink()
    refuses(lambda d: xswin_fast.from_pretrained(str(d)), tmp_path, OSError, f"names shards that are missing: {shard.name}")


def test_a_pipeline_folder_checks_its_transformer(tmp_path):
    pipe = XSwinPipeline(randomize_(tiny(DiT)).eval(), DDIMScheduler())
    pipe.save_pretrained(tmp_path)
    assert (tmp_path / "transformer" / CHECKSUMS).is_file()
    flip_a_data_byte(tmp_path / "transformer" / WEIGHTS)
    with pytest.raises(ValueError, match="transformer: diffusion_pytorch_model.safetensors does not match the SHA-256"):
        XSwinPipeline.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="transformer: diffusion_pytorch_model.safetensors does not match the SHA-256"):
        xswin_fast.from_pretrained(str(tmp_path), subfolder="transformer")


def test_loading_info_is_still_given_when_asked(folder):
    model, info = DiT.from_pretrained(folder, output_loading_info=True)
    assert isinstance(model, DiT) and info["missing_keys"] == [] and info["unexpected_keys"] == []


def test_ascend_names_its_own_argument_for_a_width_groupnorm_cannot_split():
    with pytest.raises(ValueError, match=r"level width channels \* channel_mult must be a multiple of 32") as info:
        ASCEND(**dict(ASCEND_TINY, channels=48))
    assert "in_channels" not in str(info.value)
