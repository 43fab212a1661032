"""diffusers' generic loader on exported folders, in fresh processes that never imported
xswin_fast.pipelines: ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` loads
an XSwinPipeline through the folder's one-import module, and without the flag diffusers refuses
naming it; ``XSwinPipeline.from_pretrained(folder)`` never runs the folder's code; the weights'
SHA-256 check applies on both routes. Tiny random pixel-space models, CPU, fp32."""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_diffusers_pipeline_calls import pixel_pipeline, run
from xswin_fast.pipelines import XSwinPipeline, make_loadable_by_diffusers
from xswin_fast.pipelines.export import PIPELINE_MODULE

# a fresh process: only the torchvision shim of xswin_fast.compat (this machine's CPU torch beside
# a CUDA torchvision) runs before diffusers; the pipelines package must not be imported yet
PRELUDE = """
import sys, torch
from xswin_fast.compat import ensure_torchvision_importable
ensure_torchvision_importable()
assert "xswin_fast.pipelines" not in sys.modules
from diffusers import DiffusionPipeline
folder = sys.argv[1]
"""
SAMPLE = """
pipe.transformer.set_backend("torch")
pipe.set_progress_bar_config(disable=True)
images = pipe(class_labels=[0, 1], num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(0)).images
torch.save(images, sys.argv[2])
print(type(pipe).__module__ + "." + type(pipe).__name__)
"""


def fresh_process(code: str, *args, modules_cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(modules_cache)}
    return subprocess.run([sys.executable, "-c", PRELUDE + code, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600)


def same_images(got: torch.Tensor, expected: torch.Tensor) -> None:
    """fp32 images of two processes: the same weights and noise, but the thread counts may differ
    (an earlier test may have set this process's), so reductions round differently."""
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A saved pipeline made loadable by diffusers, and its images for the fixed seed."""
    folder = tmp_path_factory.mktemp("exported")
    pipe = pixel_pipeline()
    pipe.save_pretrained(folder)
    make_loadable_by_diffusers(folder)
    return folder, run(pipe)


def test_the_folder_names_its_module_and_class(exported):
    folder, _ = exported
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == [PIPELINE_MODULE, "XSwinPipeline"]
    body = ast.parse((folder / f"{PIPELINE_MODULE}.py").read_text()).body
    assert [type(node) for node in body] == [ast.Expr, ast.ImportFrom]  # a docstring and one import
    assert body[1].module == "xswin_fast.pipelines" and [a.name for a in body[1].names] == ["XSwinPipeline"]


def test_diffusion_pipeline_loads_it_in_a_fresh_process_when_trusted(exported, tmp_path):
    folder, images = exported
    code = "pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)" + SAMPLE
    done = fresh_process(code, folder, tmp_path / "images.pt", modules_cache=tmp_path / "modules")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "xswin_fast.pipelines.xswin_pipeline.XSwinPipeline"
    same_images(torch.load(tmp_path / "images.pt"), images)


def test_without_trust_diffusers_refuses_and_names_the_flag(exported, tmp_path):
    folder, _ = exported
    code = """
try:
    DiffusionPipeline.from_pretrained(folder)
except ValueError as e:
    print("REFUSED", str(e).replace(chr(10), " "))
"""
    done = fresh_process(code, folder, modules_cache=tmp_path / "modules")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "REFUSED" in done.stdout and "trust_remote_code=True" in done.stdout
    assert PIPELINE_MODULE in done.stdout and str(folder) in done.stdout


def test_xswin_pipeline_loads_it_without_running_the_folders_code(exported, tmp_path):
    folder, images = exported
    code = "from xswin_fast.pipelines import XSwinPipeline\npipe = XSwinPipeline.from_pretrained(folder)" + SAMPLE
    done = fresh_process(code, folder, tmp_path / "images.pt", modules_cache=tmp_path / "modules")
    assert done.returncode == 0, done.stderr[-2000:]
    same_images(torch.load(tmp_path / "images.pt"), images)
    assert not (tmp_path / "modules").exists()  # diffusers copies a module it runs into this cache


def test_a_changed_module_file_is_not_run_by_xswin_pipeline(exported, tmp_path):
    folder, _ = exported
    copy = tmp_path / "copy"
    pixel_pipeline().save_pretrained(copy)
    make_loadable_by_diffusers(copy)
    marker = tmp_path / "ran"
    (copy / f"{PIPELINE_MODULE}.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    assert type(XSwinPipeline.from_pretrained(copy)) is XSwinPipeline and not marker.exists()


def test_a_flipped_weights_byte_is_caught_on_the_diffusers_route(exported, tmp_path):
    folder, _ = exported
    damaged = tmp_path / "damaged"
    pixel_pipeline().save_pretrained(damaged)
    make_loadable_by_diffusers(damaged)
    weights = damaged / "transformer" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 1
    weights.write_bytes(bytes(data))
    code = """
try:
    DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
except (OSError, ValueError) as e:
    print("REFUSED", str(e))
"""
    done = fresh_process(code, damaged, modules_cache=tmp_path / "modules")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "REFUSED" in done.stdout and "SHA-256" in done.stdout and "diffusion_pytorch_model.safetensors" in done.stdout
