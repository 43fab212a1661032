"""The API probes of ``probe_inputs.py``: XSwinPipeline call arguments, damaged model folders,
damaged checkpoints, bad op inputs and bad model keyword arguments (see ``probe_cases.py``)."""
import json
import math
import shutil
from pathlib import Path
from typing import Callable, Dict, List

import torch

from probe_cases import Fixtures, Probe, copy_run

WEIGHTS = "diffusion_pytorch_model.safetensors"


def pipeline_cases(fx: Fixtures) -> List[Probe]:
    from xswin_fast.pipelines import XSwinPipeline

    pipe = XSwinPipeline.from_pretrained(fx.eps / "model")
    pipe.transformer.set_backend("torch")
    pipe.set_progress_bar_config(disable=True)
    bad: Dict[str, dict] = {
        "num_inference_steps": {"-1": -1, "0": 0, "2.5": 2.5, "'2'": "2", "2000": 2000, "True": True},
        "guidance_scale": {"nan": math.nan, "inf": math.inf, "0.5": 0.5, "'2'": "2", "None": None},
        "class_labels": {"'3'": "3", "None": None, "[]": [], "[10]": [10], "[-1]": [-1], "[1.5]": [1.5],
                         "[[0], [1, 2]]": [[0], [1, 2]]},
        "num_images_per_prompt": {"0": 0, "-1": -1, "1.5": 1.5},
        "height": {"0": 0, "'8'": "8", "-8": -8},
        "width": {"7.0": 7.0},
        "output_type": {"'jpg'": "jpg", "None": None},
        "latents": {"wrong shape": torch.zeros(1, 1, 4, 4), "int": torch.zeros(1, 1, 8, 8, dtype=torch.long),
                    "a list": [[0.0]]},
        "generator": {"a list of 3": [torch.Generator()] * 3, "an int": 3},
        "guided_channels": {"0": 0, "2": 2, "'1'": "1"},
        "callback_on_step_end": {"not callable": 5},
        "callback_on_step_end_tensor_inputs": {"['noise']": ["noise"]},
    }
    out = []
    for arg, values in bad.items():
        for label, value in values.items():
            kwargs = {"class_labels": [0], "num_inference_steps": 2, "output_type": "pt", arg: value}
            out.append(Probe(f"{arg}={label}", lambda tmp, k=kwargs: pipe(**k), (arg,)))
    return out


def _flip(path: Path, middle: bool = False) -> None:
    """One bit flipped: 5 bytes before the end (a safetensors file's last tensor; its header stays
    readable) or halfway (inside a checkpoint's weights: the end of its zip archive is not content)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if middle else -5] ^= 1
    path.write_bytes(bytes(data))


def _rewrite_weights(folder: Path, edit: Callable[[dict], object]) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / WEIGHTS)
    edit(tensors)
    save_file(tensors, folder / WEIGHTS, metadata={"format": "pt"})
    (folder / "weights_sha256.json").unlink()  # as another tool would write it


def _edit_json(path: Path, edit: Callable[[dict], object]) -> None:
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


FOLDER_DAMAGES = {
    "a flipped weights byte": (lambda m: _flip(m / "transformer" / WEIGHTS), [WEIGHTS, "SHA-256"]),
    "truncated weights": (lambda m: (m / "transformer" / WEIGHTS).write_bytes((m / "transformer" / WEIGHTS).read_bytes()[:999]),
                          [WEIGHTS]),
    "random weights bytes": (lambda m: (m / "transformer" / WEIGHTS).write_bytes(bytes(range(256)) * 9), [WEIGHTS]),
    "no weights file": (lambda m: (m / "transformer" / WEIGHTS).unlink(), ["transformer"]),
    "a missing tensor": (lambda m: _rewrite_weights(m / "transformer", lambda t: t.pop(sorted(t)[0])), ["missing"]),
    "a wrongly shaped tensor": (lambda m: _rewrite_weights(m / "transformer", lambda t: t.update({sorted(t)[0]: torch.zeros(3)})),
                                ["wrongly shaped"]),
    "no config.json": (lambda m: (m / "transformer" / "config.json").unlink(), ["config.json"]),
    "config.json not JSON": (lambda m: (m / "transformer" / "config.json").write_text("{x"), ["config.json"]),
    "config depths a string": (lambda m: _edit_json(m / "transformer" / "config.json", lambda c: c.update(depths="ab")),
                               ["depths"]),
    "config embed_dim 0": (lambda m: _edit_json(m / "transformer" / "config.json", lambda c: c.update(embed_dim=0)),
                           ["embed_dim"]),
    "weights_sha256.json not JSON": (lambda m: (m / "transformer" / "weights_sha256.json").write_text("{"), ["weights_sha256.json"]),
    "no model_index.json": (lambda m: (m / "model_index.json").unlink(), ["model_index.json"]),
    "model_index.json not JSON": (lambda m: (m / "model_index.json").write_text("{"), ["model_index.json"]),
    "no scheduler config": (lambda m: (m / "scheduler" / "scheduler_config.json").unlink(), ["scheduler"]),
}


def _load_folder(how: str, folder: Path, tmp: Path):
    from xswin_fast.cli import sample
    from xswin_fast.pipelines import XSwinPipeline, read_model_folder

    if how == "XSwinPipeline.from_pretrained":
        return XSwinPipeline.from_pretrained(folder)
    if how == "read_model_folder":
        return read_model_folder(folder, device="cpu")
    return sample.main(["--ckpt", str(folder), "--num-samples", "2", "--steps", "2", "--threads", "1",
                        "--backend", "torch", "--no-progress", "--out", str(tmp / "out")])


def folder_cases(fx: Fixtures) -> List[Probe]:
    out = []
    for how in ("XSwinPipeline.from_pretrained", "read_model_folder", "sample.py --ckpt"):
        for name, (damage, names) in FOLDER_DAMAGES.items():
            if how != "XSwinPipeline.from_pretrained" and name.startswith("no model_index"):
                names = ["model_index.json"]

            def call(tmp, d=damage, h=how):
                folder = Path(shutil.copytree(fx.eps / "model", tmp / "model"))
                d(folder)
                return _load_folder(h, folder, tmp)
            out.append(Probe(f"{how}: {name}", call, tuple(names), cli=how.startswith("sample.py")))
    return out


def _resave(path: Path, change: Callable[[dict], object]) -> None:
    """The checkpoint at ``path`` changed and saved with plain torch.save (no checksum)."""
    from xswin_fast.checkpoints import load_checkpoint

    ckpt = load_checkpoint(path)
    change(ckpt)
    torch.save(ckpt, path)


CHECKPOINT_DAMAGES = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:4096]), ["unreadable"]),
    "random bytes": (lambda p: p.write_bytes(bytes(range(256)) * 40), ["not a torch.save archive"]),
    "empty": (lambda p: p.write_bytes(b""), ["unreadable"]),
    "a flipped byte": (lambda p: _flip(p, middle=True), ["checksum"]),
    "no model": (lambda p: _resave(p, lambda c: c.pop("model")), ["'model'"]),
    "no ema": (lambda p: _resave(p, lambda c: c.pop("ema")), ["'ema'"]),
    "no rng": (lambda p: _resave(p, lambda c: c.pop("rng")), ["'rng'"]),
    "no args": (lambda p: _resave(p, lambda c: c.pop("args")), ["'args'"]),
    "step 'ten'": (lambda p: _resave(p, lambda c: c.update(step="ten")), ["'step'"]),
    "a wrongly shaped weight": (lambda p: _resave(p, lambda c: c["model"].update({next(iter(c["model"])): torch.zeros(3)})
                                                  or c["ema"].update({next(iter(c["ema"])): torch.zeros(3)})), ["'model'"]),
    "not a dict": (lambda p: torch.save([1, 2, 3], p), ["expected a dict"]),
}


def checkpoint_cases(fx: Fixtures) -> List[Probe]:
    from xswin_fast.cli import evaluate, sample, train

    common = ["--threads", "1", "--backend", "torch", "--no-progress"]
    users = {
        "train.py --resume": lambda run, tmp: train.main(["--resume", str(run), "--max-steps", "2"]),
        "sample.py --ckpt": lambda run, tmp: sample.main(["--ckpt", str(run), "--num-samples", "2", "--steps", "2", *common,
                                                         "--out", str(tmp / "s")]),
        "evaluate.py --ckpt": lambda run, tmp: evaluate.main(["--ckpt", str(run), "--num-samples", "4", "--steps", "2", *common,
                                                             "--out", str(tmp / "e")]),
    }
    out = []
    for user, use in users.items():
        for name, (damage, names) in CHECKPOINT_DAMAGES.items():
            if user != "train.py --resume" and name == "a wrongly shaped weight":
                names = ["'ema'"]
            if user != "train.py --resume" and name in ("no rng", "no model"):
                continue  # sampling reads neither (the EMA weights; no RNG state)

            def call(tmp, d=damage, u=use):
                run = copy_run(fx.eps, tmp)
                shutil.rmtree(run / "model")  # the checkpoint, not the exported folder
                d(sorted((run / "checkpoints").glob("*.pt"))[-1])
                return u(run, tmp)
            out.append(Probe(f"{user}: {name}", call, ("0000001.pt", *names), cli=True))
    return out


def op_cases(fx: Fixtures) -> List[Probe]:
    from xswin_fast import ops

    x, s = torch.randn(2, 5, 8), torch.randn(2, 8)
    q = torch.randn(1, 5, 7, 2, 4)
    cases = {
        "modulate_layernorm fp16 weight on fp32": (lambda: ops.modulate_layernorm(x, s, s, weight=torch.ones(8).half(),
                                                                                    backend="torch"), ["weight"]),
        "residual_layernorm fp16 weight on fp32": (lambda: ops.residual_layernorm(x, x, weight=torch.ones(8).half(),
                                                                                    backend="torch"), ["weight"]),
        "modulate_layernorm shift of another batch": (lambda: ops.modulate_layernorm(x, s[:1], s, backend="torch"), ["shift"]),
        "modulate 1-D x": (lambda: ops.modulate(x[0, 0], s, s, backend="torch"), ["x must"]),
        "modulate int x": (lambda: ops.modulate(x.long(), s, s, backend="torch"), ["x"]),
        "layernorm_modulate eps 0": (lambda: ops.layernorm_modulate(x, s, s, eps=0.0, backend="torch"), ["eps"]),
        "layernorm_modulate eps nan": (lambda: ops.layernorm_modulate(x, s, s, eps=math.nan, backend="torch"), ["eps"]),
        "gated_residual gate of another width": (lambda: ops.gated_residual(x, x, torch.randn(2, 4), backend="torch"), ["gate"]),
        "modulate backend 'cuda'": (lambda: ops.modulate(x, s, s, backend="cuda"), ["backend"]),
        "window_attention window (1024, 1024)": (lambda: ops.window_attention(q, q, q, (1024, 1024), backend="torch"),
                                                 ["window_size"]),
        "window_attention window 0": (lambda: ops.window_attention(q, q, q, (0, 2), backend="torch"), ["window_size"]),
        "window_attention shift = window": (lambda: ops.window_attention(q, q, q, (2, 2), (2, 0), backend="torch"),
                                            ["shift_size"]),
        "window_attention k of another size": (lambda: ops.window_attention(q, q[:, :4], q, (2, 2), backend="torch"), ["k"]),
        "window_attention 4-D q": (lambda: ops.window_attention(q[0], q[0], q[0], (2, 2), backend="torch"), ["q"]),
        "window_attention bias of the wrong shape": (lambda: ops.window_attention(q, q, q, (2, 2), bias=torch.zeros(2, 3, 3),
                                                                                  backend="torch"), ["bias"]),
        "window_attention logit_scale of 3 heads": (lambda: ops.window_attention(q, q, q, (2, 2), logit_scale=torch.zeros(3),
                                                                                 backend="torch"), ["logit_scale"]),
        "window_attention scale nan": (lambda: ops.window_attention(q, q, q, (2, 2), scale=math.nan, backend="torch"),
                                       ["scale"]),
        "window_attention out of the wrong shape": (lambda: ops.window_attention(q, q, q, (2, 2), out=torch.zeros(1, 5, 7, 3),
                                                                                 backend="torch"), ["out"]),
        "window_attention window a float": (lambda: ops.window_attention(q, q, q, (2.5, 2), backend="torch"), ["window_size"]),
    }
    return [Probe(name, lambda tmp, c=call: c(), tuple(names)) for name, (call, names) in cases.items()]


MODEL_KWARGS = {
    "XSwin-digits": {"embed_dim": 0, "embed_dim ": -16, "num_heads": (1, 3), "depths": (2,), "window_size": 0,
                     "patch_size": 3, "mlp_ratio": math.nan, "num_classes": 0, "in_channels": 0, "input_size": 0,
                     "class_dropout_prob": 1.5, "learn_sigma": "yes", "bogus": 1},
    "DiT-digits": {"hidden_size": 0, "num_heads": 3, "depth": 0, "patch_size": 3, "mlp_ratio": -1.0,
                   "class_dropout_prob": math.nan, "num_classes": -1, "bogus": 1},
    "UViT-digits": {"depth": 0, "hidden_size": 30, "num_heads": 0},
    "DiffiT-digits": {"channels": (32, 64), "window_size": 0, "time_dim": 0, "num_heads": (1, 0, 2)},
    "ASCEND-digits": {"channels": 48, "head_channels": 0, "window_size": 0, "channel_mult": ()},
    "IUViT-digits": {"depth": 0, "hidden_size": -64},
}

# a list whose length contradicts another argument's: the message names both
RELATIVE = {("XSwin-digits", "depths"): ("num_heads", "depths"), ("DiffiT-digits", "channels"): ("depths", "channels")}


def _forward_cases() -> Dict[str, tuple]:
    from xswin_fast.models import create_model

    model = create_model("XSwin-digits").eval()
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([1, 500]), torch.tensor([0, 9])
    return {
        "forward x of 3 channels": (lambda: model(torch.randn(2, 3, 8, 8), t, y), ["x"]),
        "forward x 3-D": (lambda: model(x[0], t, y), ["x"]),
        "forward x int": (lambda: model(x.long(), t, y), ["x"]),
        "forward t of 3": (lambda: model(x, torch.tensor([1, 2, 3]), y), ["t"]),
        "forward y beyond the null label": (lambda: model(x, t, torch.tensor([0, 11])), ["y"]),
        "forward y float": (lambda: model(x, t, y.float()), ["y"]),
        "forward_with_cfg cfg_scale nan": (lambda: model.forward_with_cfg(x, t, y, math.nan), ["cfg_scale"]),
    }


def model_kwarg_cases(fx: Fixtures) -> List[Probe]:
    from xswin_fast.models import create_model

    out = []
    for preset, kwargs in MODEL_KWARGS.items():
        for key, value in kwargs.items():
            key = key.strip()
            names = RELATIVE.get((preset, key), (key,))
            out.append(Probe(f"{preset} {key}={value!r}", lambda tmp, p=preset, k=key, v=value: create_model(p, **{k: v}),
                             names))
    out.append(Probe("create_model unknown name", lambda tmp: create_model("XSwin-Z/3"), ("XSwin-Z/3",)))
    out += [Probe(name, lambda tmp, c=call: c(), tuple(names)) for name, (call, names) in _forward_cases().items()]
    return out
