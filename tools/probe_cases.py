"""The probes of ``probe_inputs.py``, by kind, and the tiny runs they use (``Fixtures``).

Every probe is an input that must be refused; ``names`` are the words its one-line message must
contain (the flag, argument or file at fault). CLI flags get generated values that no flag accepts
("abc"; "nan" for a float; a negative number where only counts or sizes make sense) besides the
cases the outside check found; damaged folders and checkpoints are copies of the tiny runs.
"""
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Sequence, Tuple

KINDS = ("train", "sample", "evaluate", "pipeline", "folders", "checkpoints", "ops", "model-kwargs")
TINY = json.dumps({"embed_dim": 16, "depths": [1, 1], "num_heads": [1, 1], "bottleneck_depth": 1})


@dataclass
class Probe:
    name: str
    call: Callable[[Path], object]  # gets a fresh scratch folder
    names: Tuple[str, ...] = ()
    cli: bool = False


def train_argv(run: Path, *extra: str) -> List[str]:
    """A 1-step run of the tiny XSwin-digits on the torch backend, one thread, batch 16."""
    return ["--run-dir", str(run), "--model-kwargs", TINY, "--backend", "torch", "--threads", "1",
            "--global-batch-size", "16", "--max-steps", "1", "--sample-every", "0", "--sample-num", "2",
            "--sample-steps", "2", "--no-progress", *extra]


@dataclass
class Fixtures:
    """The runs every kind reads (never changes): ``eps``, ``flow`` and ``no_eval`` run folders;
    ``eps / "model"`` is the eps run's exported model folder."""

    eps: Path
    flow: Path
    no_eval: Path

    @classmethod
    def read(cls, work: Path) -> "Fixtures":
        return cls(work / "eps", work / "flow", work / "no-eval")

    @classmethod
    def build(cls, work: Path) -> "Fixtures":
        from xswin_fast.cli import train

        fx = cls.read(work)
        for run, extra in ((fx.eps, ()), (fx.flow, ("--objective", "flow")), (fx.no_eval, ("--eval-fraction", "0"))):
            if not (run / "model").is_dir() and not (run / "checkpoints").is_dir():
                if train.main(train_argv(run, *extra)) != 0:
                    raise RuntimeError(f"the tiny run {run} failed")
        return fx


def _cli(name: str, main: Callable, argv: Callable[[Path], List[str]], names: Sequence[str]) -> Probe:
    return Probe(name, lambda tmp: main(argv(tmp)), tuple(names), cli=True)


# numbers that may be negative: a guidance scale below 0 (guiding away from the label) is valid
SIGNED = ("--cfg-scale", "--sample-cfg", "--logit-mean")


def _generated_flag_values(parser, skip: Sequence[str]) -> List[Tuple[str, str]]:
    """(flag, value) pairs no flag accepts: "abc" for a number, "nan" for a float, -5 for a number
    that is not ``SIGNED`` (a value of several words is several arguments)."""
    out = []
    for a in parser._actions:
        if not a.option_strings or a.nargs == 0 or a.choices or a.option_strings[0] in skip:
            continue
        flag, kind = a.option_strings[0], getattr(a.type, "__name__", "")
        pair = " 1" if a.nargs == 2 else ""  # (LO, HI) flags: the bad value as LO, a valid HI
        if kind in ("int", "float", "positive_int", "non_negative_int", "finite_float", "positive_float", "int_parse"):
            out.append((flag, "abc" + pair))
            if "float" in kind:
                out.append((flag, "nan" + pair))
            if flag not in SIGNED:
                out.append((flag, "-5" + pair))
        elif a.choices is None and kind in ("parse_threads", "parse_time_shift"):
            out.append((flag, "abc"))
    return out


def train_cases(fx: Fixtures) -> List[Probe]:
    from xswin_fast.cli import train
    from xswin_fast.runs.config import build_parser

    parser = build_parser(None)
    skip = ("--logit-mean", "--resume", "--model-kwargs")
    out = [_cli(f"{flag} {value}", train.main, lambda tmp, f=flag, v=value: train_argv(tmp / "run", f, *v.split()), [flag])
           for flag, value in _generated_flag_values(parser, skip)]
    for flag in ("--model", "--backend", "--objective", "--beta-schedule", "--lr-schedule", "--precision", "--sample-sampler"):
        out.append(_cli(f"{flag} bogus", train.main, lambda tmp, f=flag: train_argv(tmp / "run", f, "bogus"), [flag]))
    hand = {
        "--beta-schedule on flow": (["--objective", "flow", "--beta-schedule", "squaredcos_cap_v2"], ["--beta-schedule"]),
        "--time-shift on eps": (["--time-shift", "3"], ["--time-shift"]),
        "--t-sampling on eps": (["--t-sampling", "logit-normal"], ["--t-sampling"]),
        "--time-shift auto in pixel space": (["--objective", "flow", "--time-shift", "auto"], ["--time-shift"]),
        "--model-kwargs in_channels 3": (["--model-kwargs", '{"in_channels": 3}'], ["in_channels"]),
        "--model-kwargs num_classes 5": (["--model-kwargs", '{"num_classes": 5}'], ["num_classes"]),
        "--model-kwargs input_size 16": (["--model-kwargs", '{"input_size": 16}'], ["input_size"]),
        "--model-kwargs typo": (["--model-kwargs", '{"embed_dimm": 8}'], ["embed_dimm"]),
        "--model-kwargs not JSON": (["--model-kwargs", "{embed_dim: 8"], ["--model-kwargs"]),
        "--model-kwargs a list": (["--model-kwargs", "[1, 2]"], ["--model-kwargs"]),
        "--model-kwargs embed_dim 0": (["--model-kwargs", '{"embed_dim": 0}'], ["embed_dim"]),
        "--data missing": (["--data", "/nonexistent/images"], ["--data"]),
        "--resume missing": (["--resume", "/nonexistent/run"], ["/nonexistent/run"]),
        "--device gpu": (["--device", "gpu"], ["--device"]),
        "--device cuda without a GPU": (["--device", "cuda"], ["--device"]),
        "--backend triton on a CPU": (["--backend", "triton"], ["--backend"]),
        "--eval-fraction 1": (["--eval-fraction", "1"], ["--eval-fraction"]),
        "--ema-decay 2": (["--ema-decay", "2"], ["--ema-decay"]),
        "--sample-steps beyond T": (["--sample-steps", "2000"], ["--sample-steps"]),
        "diverged run": (["--lr", "3", "--max-grad-norm", "0", "--lr-warmup-steps", "0", "--ckpt-every", "1",
                          "--max-steps", "6"], ["step"]),
    }
    for name, (extra, names) in hand.items():
        out.append(_cli(name, train.main, lambda tmp, e=extra: train_argv(tmp / "run", *e), names))
    return out


def _sample_argv(run: Path, tmp: Path, *extra: str) -> List[str]:
    return ["--ckpt", str(run), "--num-samples", "2", "--threads", "1", "--backend", "torch", "--no-progress",
            "--out", str(tmp / "out"), *extra]


def sample_cases(fx: Fixtures) -> List[Probe]:
    from xswin_fast.cli import sample

    out = [_cli(f"{flag} {value}", sample.main, lambda tmp, f=flag, v=value: _sample_argv(fx.eps, tmp, "--steps", "2", f, *v.split()),
                [flag])
           for flag, value in _generated_flag_values(sample.build_parser(), ("--ckpt",))]
    eps, flow = fx.eps, fx.flow
    hand = {
        "--sampler euler on eps": (eps, ["--sampler", "euler"], ["--sampler"]),
        "--sampler ddim on flow": (flow, ["--sampler", "ddim"], ["--sampler"]),
        "--atol on eps": (eps, ["--atol", "1e-4"], ["--atol"]),
        "--rtol with sde": (flow, ["--sampler", "sde", "--rtol", "1e-2"], ["--rtol"]),
        "--rtol 0 on dopri5": (flow, ["--sampler", "dopri5", "--rtol", "0"], ["--rtol"]),
        "--steps on dopri5": (flow, ["--sampler", "dopri5", "--steps", "4"], ["--steps"]),
        "--steps beyond T": (eps, ["--steps", "5000"], ["--steps"]),
        "--cfg-interval reversed": (eps, ["--cfg-interval", "0.8", "0.2"], ["--cfg-interval"]),
        "--cfg-interval empty": (eps, ["--cfg-interval", "0.5", "0.5"], ["--cfg-interval"]),
        "--cfg-interval beyond 1": (eps, ["--cfg-interval", "0", "2"], ["--cfg-interval"]),
        "--cfg-interval-sigma negative": (flow, ["--cfg-interval-sigma", "-1", "2"], ["--cfg-interval-sigma"]),
        "--guided-channels beyond the model": (eps, ["--guided-channels", "2"], ["--guided-channels"]),
        "--guided-channels at cfg 1": (eps, ["--guided-channels", "1", "--cfg-scale", "1"], ["--guided-channels"]),
        "--labels unknown": (eps, ["--labels", "zebra"], ["--labels"]),
        "--labels out of range": (eps, ["--labels", "10"], ["--labels"]),
        "--labels empty": (eps, ["--labels", ","], ["--labels"]),
        "--backend triton on a CPU": (eps, ["--backend", "triton"], ["--backend"]),
        "--device cuda without a GPU": (eps, ["--device", "cuda"], ["--device"]),
        "--ckpt missing": (Path("/nonexistent/run"), [], ["/nonexistent/run"]),
        "--ckpt a text file": (eps / "split.json", [], ["split.json"]),
    }
    for name, (run, extra, names) in hand.items():
        steps = [] if "dopri5" in extra or "--steps" in extra else ["--steps", "2"]
        out.append(_cli(name, sample.main, lambda tmp, r=run, e=extra, s=steps: _sample_argv(r, tmp, *s, *e), names))
    out.append(_cli("--out an existing file", sample.main, lambda tmp: _sample_argv(eps, tmp, "--steps", "2", "--out",
                                                                              str(_a_file(tmp / "f"))), ["--out"]))
    return out


def _a_file(path: Path) -> Path:
    path.write_text("")
    return path


def _evaluate_argv(run: Path, tmp: Path, *extra: str) -> List[str]:
    return ["--ckpt", str(run), "--num-samples", "4", "--steps", "2", "--threads", "1", "--backend", "torch",
            "--no-progress", "--out", str(tmp / "eval"), *extra]


def _image_folder(tmp: Path) -> Path:
    from PIL import Image

    folder = tmp / "images"
    folder.mkdir()
    for i in range(4):
        Image.new("L", (8, 8), 40 * i).save(folder / f"{i}.png")
    return folder


def evaluate_cases(fx: Fixtures) -> List[Probe]:
    from xswin_fast.cli import evaluate

    skip = ("--ckpt", "--samples", "--ref", "--inception-weights", "--digits-extractor-weights", "--metrics")
    out = [_cli(f"{flag} {value}", evaluate.main, lambda tmp, f=flag, v=value: _evaluate_argv(fx.eps, tmp, f, *v.split()), [flag])
           for flag, value in _generated_flag_values(evaluate.build_parser(), skip)]
    hand = {
        "--sampler euler on eps": (["--sampler", "euler"], ["--sampler"]),
        "--atol on eps": (["--atol", "1e-4"], ["--atol"]),
        "--metrics bogus": (["--metrics", "fid,fdd"], ["--metrics"]),
        "--num-samples 1": (["--num-samples", "1"], ["--num-samples"]),
        "--ref missing": (["--ref", "/nonexistent/ref"], ["/nonexistent/ref"]),
        "--inception-weights missing": (["--feature-extractor", "inception", "--inception-weights", "/nonexistent/w.pth"],
                                        ["/nonexistent/w.pth"]),
        "--device cuda without a GPU": (["--device", "cuda"], ["--device"]),
        "--backend triton on a CPU": (["--backend", "triton"], ["--backend"]),
    }
    for name, (extra, names) in hand.items():
        out.append(_cli(name, evaluate.main, lambda tmp, e=extra: _evaluate_argv(fx.eps, tmp, *e), names))
    out.append(_cli("a run trained with --eval-fraction 0", evaluate.main, lambda tmp: _evaluate_argv(fx.no_eval, tmp),
                    ["--eval-fraction 0"]))
    out.append(_cli("--ckpt and --samples", evaluate.main,
                    lambda tmp: _evaluate_argv(fx.eps, tmp, "--samples", str(tmp)), ["--ckpt", "--samples"]))
    folders = {
        "--samples with --sampler": (["--sampler", "ddim"], ["--sampler"]),
        "--samples with --cfg-scale": (["--cfg-scale", "3"], ["--cfg-scale"]),
        "--samples with --atol": (["--atol", "1e-4"], ["--atol"]),
        "--samples with --guided-channels": (["--guided-channels", "1"], ["--guided-channels"]),
        "--samples without --ref": (None, ["--ref"]),
        "--samples an empty folder": ([], ["images"]),
    }
    for name, (extra, names) in folders.items():
        out.append(_cli(name, evaluate.main, lambda tmp, e=extra, n=name: _folders_argv(tmp, e, n.endswith("empty folder")),
                        names))
    return out


def _folders_argv(tmp: Path, extra, empty: bool) -> List[str]:
    """evaluate.py on two folders of 4 grey 8x8 PNGs (``extra`` None: without --ref)."""
    (tmp / "gen").mkdir()
    (tmp / "ref").mkdir()
    images = tmp / "gen" / "empty" if empty else _image_folder(tmp / "gen")
    images.mkdir(exist_ok=True)
    ref = [] if extra is None else ["--ref", str(_image_folder(tmp / "ref"))]
    return ["--samples", str(images), *ref, *(extra or []), "--metrics", "fid", "--feature-extractor", "digits",
            "--out", str(tmp / "eval")]


def cases(kind: str, fx: Fixtures) -> List[Probe]:
    """Every probe of ``kind`` (one of ``KINDS``)."""
    import probe_api_cases

    builders = {"train": train_cases, "sample": sample_cases, "evaluate": evaluate_cases,
                "pipeline": probe_api_cases.pipeline_cases, "folders": probe_api_cases.folder_cases,
                "checkpoints": probe_api_cases.checkpoint_cases, "ops": probe_api_cases.op_cases,
                "model-kwargs": probe_api_cases.model_kwarg_cases}
    return builders[kind](fx)


def copy_run(run: Path, tmp: Path) -> Path:
    """A copy of ``run`` in ``tmp`` to damage."""
    return Path(shutil.copytree(run, tmp / run.name))

