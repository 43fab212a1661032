"""A user's mistake on train.py, sample.py or evaluate.py ends in one line naming the argument and
a non-zero exit status, never in a traceback; run directories are locked and numbered atomically."""
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xswin_fast.cli import evaluate, sample, train
from xswin_fast.runs.run_dir import new_numbered_run_dir

ROOT = Path(__file__).resolve().parents[1]
from families import TINY_DIGITS  # noqa: E402
from helpers import train_args  # noqa: E402


def run_cli(main, argv, capsys):
    """(exit status, stderr) of ``main(argv)``; any exception other than SystemExit propagates
    (it would be a traceback)."""
    try:
        status, err = main(argv), ""
    except SystemExit as exc:
        status, err = (1, exc.code) if isinstance(exc.code, str) else (exc.code, "")
    return status, err + capsys.readouterr().err


def assert_one_line_error(status, err, *names):
    assert status not in (0, None), err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for name in names:
        assert name in lines[0], (name, lines[0])


def env():
    e = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), e.get("PYTHONPATH", "")])
    return e


def tiny(run_dir, *extra):
    return train_args(run_dir, "--max-steps", "1", *extra)


TRAIN_CASES = {
    "lr nan": (["--lr", "nan"], ["--lr"]),
    "lr negative": (["--lr", "-1"], ["--lr"]),
    "weight decay inf": (["--weight-decay", "inf"], ["--weight-decay"]),
    "batch 0": (["--global-batch-size", "0"], ["--global-batch-size"]),
    "eval fraction 1": (["--eval-fraction", "1"], ["--eval-fraction"]),
    "ema decay 2": (["--ema-decay", "2"], ["--ema-decay"]),
    "max steps 0": (["--max-steps", "0"], ["--max-steps"]),
    "epochs 0": (["--epochs", "0"], ["--epochs"]),
    "sample cfg nan": (["--sample-cfg", "nan"], ["--sample-cfg"]),
    "sample steps beyond T": (["--sample-steps", "2000"], ["--sample-steps"]),
    "negative seed": (["--global-seed", "-1"], ["--global-seed"]),
    "not a number": (["--lr", "fast"], ["--lr"]),
    "unknown model": (["--model", "XSwin-Z/3"], ["--model"]),
    "device gpu": (["--device", "gpu"], ["--device"]),
    "cuda without a GPU": (["--device", "cuda"], ["--device cuda"]),
    "model kwargs typo": (["--model-kwargs", '{"embed_dimm": 8}'], ["--model"]),
    "data missing": (["--data", "/nonexistent/images"], ["--data"]),
    "unknown objective": (["--objective", "x0"], ["--objective"]),
    "time shift 0": (["--time-shift", "0"], ["--time-shift"]),
    "time shift word": (["--time-shift", "big"], ["--time-shift"]),
    "logit std 0": (["--logit-std", "0"], ["--logit-std"]),
    "flow sampler for eps": (["--sample-sampler", "euler"], ["--sample-sampler euler", "--objective eps"]),
    "eps sampler for flow": (["--objective", "flow", "--sample-sampler", "ddim"], ["--sample-sampler ddim"]),
    "beta schedule on flow": (["--objective", "flow", "--beta-schedule", "squaredcos_cap_v2"], ["--beta-schedule", "eps"]),
    "time shift on eps": (["--time-shift", "3"], ["--time-shift", "flow"]),
    "t sampling on eps": (["--t-sampling", "logit-normal"], ["--t-sampling", "flow"]),
    "logit std on eps": (["--objective", "eps", "--logit-std", "2"], ["--logit-std", "flow"]),
    "time shift auto in pixel space": (["--objective", "flow", "--time-shift", "auto"], ["--time-shift auto"]),
}


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_train_user_error_is_one_line(case, tmp_path, capsys):
    if case == "cuda without a GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    extra, names = TRAIN_CASES[case]
    argv = tiny(tmp_path / "run", *extra)
    if case == "model kwargs typo":
        argv[argv.index(TINY_DIGITS)] = extra[1]
        argv = argv[: -len(extra)]
    assert_one_line_error(*run_cli(train.main, argv, capsys), *names)
    assert not list((tmp_path / "run").glob("checkpoints/*.pt"))


def test_train_data_errors_are_one_line(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    assert_one_line_error(*run_cli(train.main, tiny(tmp_path / "a", "--data", str(data), "--vae", "none"), capsys),
                          "--data", "no class subfolders")
    (data / "cat").mkdir()
    for i in range(3):
        (data / "cat" / f"{i}.png").write_bytes(b"not a png")
    status, err = run_cli(train.main, tiny(tmp_path / "b", "--data", str(data), "--vae", "none", "--image-size", "8"), capsys)
    assert_one_line_error(status, err.split("skipping unreadable")[0] + err.splitlines()[-1], "--data", "none of its 3 images")


def test_train_results_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "results").write_text("")
    argv = tiny(tmp_path / "x")[2:] + ["--results-dir", str(tmp_path / "results")]
    assert_one_line_error(*run_cli(train.main, argv, capsys), "--results-dir", "is a file")


def test_train_read_only_folder_and_full_disk(tmp_path, capsys, monkeypatch):
    def read_only(self, *a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    with monkeypatch.context() as m:
        m.setattr(Path, "mkdir", read_only)
        assert_one_line_error(*run_cli(train.main, tiny(tmp_path / "ro"), capsys), "Read-only file system", "ro")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full)
    status, err = run_cli(train.main, tiny(tmp_path / "full"), capsys)
    assert_one_line_error(status, err, "No space left on device", "0000001.pt")
    assert not list((tmp_path / "full" / "checkpoints").iterdir())  # no temporary file left behind


def test_train_run_dir_is_locked_against_a_second_process(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    holder_code = ("import sys, time; from pathlib import Path; from xswin_fast.runs.run_dir import run_dir_lock\n"
                   "with run_dir_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", holder_code, str(run)], stdout=subprocess.PIPE, env=env(), text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        status, err = run_cli(train.main, tiny(run), capsys)
        assert_one_line_error(status, err, "in use by another training process", f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    assert (run / ".lock").read_text().strip() == str(holder.pid)  # the lock file of a dead process...
    assert train.main(tiny(run)) == 0  # ...is taken over


def test_train_numbered_run_dirs_are_created_atomically(tmp_path):
    a, b = new_numbered_run_dir(tmp_path, "XSwin-S/2"), new_numbered_run_dir(tmp_path, "XSwin-S/2")
    assert (a.name, b.name) == ("000-XSwin-S-2", "001-XSwin-S-2") and a.is_dir() and b.is_dir()


SAMPLE_CASES = {
    "num samples 0": (["--num-samples", "0"], ["--num-samples"]),
    "batch size 0": (["--batch-size", "0"], ["--batch-size"]),
    "steps 0": (["--steps", "0"], ["--steps"]),
    "steps beyond T": (["--steps", "5000"], ["--steps"]),
    "cfg nan": (["--cfg-scale", "nan"], ["--cfg-scale"]),
    "cfg inf": (["--cfg-scale", "inf"], ["--cfg-scale"]),
    "seed negative": (["--seed", "-3"], ["--seed"]),
    "nrow 0": (["--nrow", "0"], ["--nrow"]),
    "threads": (["--threads", "-2"], ["--threads"]),
    "unknown label": (["--labels", "7,zebra"], ["--labels", "zebra"]),
    "label out of range": (["--labels", "12"], ["--labels"]),
    "labels empty": (["--labels", " "], ["--labels", "empty"]),
    "device gpu": (["--device", "gpu"], ["--device"]),
    "cuda without a GPU": (["--device", "cuda"], ["--device cuda"]),
    "missing checkpoint": (["--ckpt", "/nonexistent/run"], ["/nonexistent/run"]),
    "flow sampler for eps": (["--sampler", "heun"], ["--sampler heun", "eps"]),
    "cfg interval reversed": (["--cfg-interval", "0.8", "0.2"], ["--cfg-interval"]),
    "cfg interval beyond 1": (["--cfg-interval", "0", "2"], ["--cfg-interval"]),
    "cfg interval nan": (["--cfg-interval", "nan", "1"], ["--cfg-interval"]),
    "cfg interval in t and sigma": (["--cfg-interval", "0", "1", "--cfg-interval-sigma", "0", "1"], ["--cfg-interval-sigma"]),
    "sigma interval reversed": (["--cfg-interval-sigma", "5", "0.3"], ["--cfg-interval-sigma"]),
    "guided channels beyond the model": (["--guided-channels", "2"], ["--guided-channels", "1 input channels"]),
    "guided channels without guidance": (["--guided-channels", "1", "--cfg-scale", "1"], ["--guided-channels"]),
    "guided channels 0": (["--guided-channels", "0"], ["--guided-channels"]),
    "atol for a fixed-step sampler": (["--atol", "1e-4"], ["--atol", "dopri5", "ddpm"]),
    "rtol for a fixed-step sampler": (["--sampler", "ddim", "--rtol", "1e-2"], ["--rtol", "dopri5", "ddim"]),
    "atol 0": (["--atol", "0"], ["--atol", "> 0"]),
    "rtol negative": (["--rtol", "-0.001"], ["--rtol", "> 0"]),
    "atol nan": (["--atol", "nan"], ["--atol", "finite"]),
}


@pytest.mark.parametrize("case", sorted(SAMPLE_CASES))
def test_sample_user_error_is_one_line(case, digits_run, tmp_path, capsys):
    if case == "cuda without a GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    extra, names = SAMPLE_CASES[case]
    argv = ["--ckpt", str(digits_run), "--num-samples", "2", "--steps", "2", "--out", str(tmp_path / "s"), *extra]
    assert_one_line_error(*run_cli(sample.main, argv, capsys), *names)
    assert not (tmp_path / "s").exists()


def test_sample_out_that_is_a_file(digits_run, tmp_path, capsys):
    (tmp_path / "taken").write_text("")
    argv = ["--ckpt", str(digits_run), "--num-samples", "2", "--steps", "2", "--out", str(tmp_path / "taken")]
    assert_one_line_error(*run_cli(sample.main, argv, capsys), "--out", "is a file")


EVALUATE_CASES = {
    "kid subset 0": (["--kid-subset-size", "0"], ["--kid-subset-size"]),
    "isc splits 0": (["--isc-splits", "0"], ["--isc-splits"]),
    "prc neighborhood 0": (["--prc-neighborhood", "0"], ["--prc-neighborhood"]),
    "unknown metric": (["--metrics", "fid,fdd"], ["--metrics"]),
    "one sample": (["--num-samples", "1"], ["--num-samples"]),
    "cfg nan": (["--cfg-scale", "nan"], ["--cfg-scale"]),
    "steps 0": (["--steps", "0"], ["--steps"]),
    "batch size 0": (["--batch-size", "0"], ["--batch-size"]),
    "flow sampler for eps": (["--sampler", "euler"], ["--sampler euler"]),
    "atol for a fixed-step sampler": (["--atol", "1e-4"], ["--atol", "dopri5"]),
    "rtol inf": (["--rtol", "inf"], ["--rtol", "finite"]),
    "missing inception weights": (["--feature-extractor", "inception", "--inception-weights", "/nonexistent/w.pth"],
                                  ["/nonexistent/w.pth"]),
    "samples without ref": (["--samples", "x"], ["--samples", "--ref"]),
    "weights of an unused extractor": (["--fashion-extractor-weights", "/nonexistent/f.pt"],
                                       ["--fashion-extractor-weights", "this evaluation uses digits"]),
    "cuda without a GPU": (["--device", "cuda"], ["--device cuda"]),
}


@pytest.mark.parametrize("case", sorted(EVALUATE_CASES))
def test_evaluate_user_error_is_one_line(case, digits_run, tmp_path, capsys):
    if case == "cuda without a GPU" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    extra, names = EVALUATE_CASES[case]
    argv = ["--ckpt", str(digits_run), "--steps", "2", "--out", str(tmp_path / "e"), *extra]
    if case == "samples without ref":
        argv = ["--samples", str(tmp_path), "--out", str(tmp_path / "e")]
    assert_one_line_error(*run_cli(evaluate.main, argv, capsys), *names)
    assert not (tmp_path / "e").exists()  # refused before any sampling


def test_evaluate_without_torch_fidelity_stops_before_sampling(digits_run, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch_fidelity" else real(name, *a))
    argv = ["--ckpt", str(digits_run), "--steps", "2", "--out", str(tmp_path / "e")]
    assert_one_line_error(*run_cli(evaluate.main, argv, capsys), "torch-fidelity")
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("script,argv,name", [
    ("sample.py", ["--ckpt", "/nonexistent", "--num-samples", "0"], "--num-samples"),
    ("train.py", ["--data", "/nonexistent/images"], "--data"),
])
def test_cli_script_prints_one_line_without_traceback(tmp_path, script, argv, name):
    res = subprocess.run([sys.executable, str(ROOT / script), *argv], cwd=tmp_path, env=env(), capture_output=True,
                         text=True, timeout=300)
    assert_one_line_error(res.returncode, res.stderr, name)


@pytest.fixture
def fresh_cli_logging():
    """No log handler of an earlier CLI call in this process: it writes to that test's captured,
    since closed, stdout."""
    import logging

    log = logging.getLogger("xswin_fast")
    old = [h for h in log.handlers if getattr(h, "_xswin_cli", False)]
    for h in old:
        log.removeHandler(h)
    yield
    for h in [h for h in log.handlers if getattr(h, "_xswin_cli", False)]:
        log.removeHandler(h)


@pytest.mark.usefixtures("fresh_cli_logging")
@pytest.mark.parametrize("key,value", [("in_channels", 3), ("num_classes", 5), ("input_size", 16)])
def test_train_model_kwargs_that_contradict_the_data_are_refused_before_training(key, value, tmp_path, capsys):
    import json

    kwargs = json.dumps({**json.loads(TINY_DIGITS), key: value})
    argv = tiny(tmp_path / "run")
    argv[argv.index(TINY_DIGITS)] = kwargs
    assert_one_line_error(*run_cli(train.main, argv, capsys), "--model-kwargs", f"{key}={value}", "contradicts the data")
    assert not (tmp_path / "run" / "losses.csv").exists()


@pytest.mark.usefixtures("fresh_cli_logging")
def test_train_full_disk_while_writing_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch):
    import builtins

    from xswin_fast import checkpoints

    run = tmp_path / "run"
    assert train.main(tiny(run, "--ckpt-every", "1")) == 0

    class FullDisk:
        """A file opened for writing on a full disk: its first write fails with ENOSPC."""

        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def flush(self):
            self.f.flush()

        def fileno(self):
            return self.f.fileno()

    monkeypatch.setattr(checkpoints, "open", lambda path, mode="r", *a, **k: FullDisk(builtins.open(path, mode, *a, **k)),
                        raising=False)
    status, err = run_cli(train.main, ["--resume", str(run), "--max-steps", "2"], capsys)
    assert_one_line_error(status, err, "No space left on device", "0000002.pt")
    monkeypatch.undo()
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["0000001.pt"]  # nothing lost, no temporary file
    checkpoints.load_checkpoint(run / "checkpoints" / "0000001.pt")


def _rewritten(run, change):
    """``run``'s checkpoint changed by ``change(ckpt)`` and saved with plain torch.save (no checksum)."""
    from xswin_fast.checkpoints import list_checkpoints, load_checkpoint

    path = list_checkpoints(run / "checkpoints")[-1]
    ckpt = load_checkpoint(path)
    change(ckpt)
    torch.save(ckpt, path)
    return path


def _wrong_shape(key):
    def change(ckpt):
        name = next(iter(ckpt[key]))
        ckpt[key][name] = torch.zeros(3)
    return change


BAD_CHECKPOINTS = {
    "no model": (lambda c: c.pop("model"), ["'model'"]),
    "no rng": (lambda c: c.pop("rng"), ["'rng'"]),
    "step ten": (lambda c: c.update(step="ten"), ["'step'", "int"]),
    "wrongly shaped weight": (_wrong_shape("model"), ["'model'", "do not fit"]),
}


@pytest.mark.usefixtures("fresh_cli_logging")
@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_resume_from_a_checkpoint_without_checksum_that_is_incomplete_is_one_line(case, tmp_path, capsys):
    run = tmp_path / "run"
    assert train.main(tiny(run)) == 0
    change, names = BAD_CHECKPOINTS[case]
    path = _rewritten(run, change)
    status, err = run_cli(train.main, ["--resume", str(run), "--max-steps", "2"], capsys)
    assert_one_line_error(status, err, path.name, *names)


@pytest.mark.usefixtures("fresh_cli_logging")
@pytest.mark.parametrize("change,names", [(_wrong_shape("ema"), ["'ema'", "do not fit"]),
                                          (lambda c: c.update(step="ten"), ["'step'"])])
def test_sample_from_a_bad_checkpoint_is_one_line(change, names, tmp_path, capsys):
    run = tmp_path / "run"
    assert train.main(tiny(run)) == 0
    path = _rewritten(run, change)
    argv = ["--ckpt", str(run), "--num-samples", "2", "--steps", "2", "--out", str(tmp_path / "s")]
    assert_one_line_error(*run_cli(sample.main, argv, capsys), path.name, *names)


@pytest.mark.usefixtures("fresh_cli_logging")
def test_sample_backend_triton_on_a_cpu_is_one_line(digits_run, tmp_path, capsys, monkeypatch):
    # a user's CPU: the kernels were imported without the interpreter
    monkeypatch.setattr(sample, "interpreter_active", lambda: False)
    argv = ["--ckpt", str(digits_run), "--num-samples", "2", "--steps", "2", "--backend", "triton", "--device", "cpu",
            "--out", str(tmp_path / "s")]
    assert_one_line_error(*run_cli(sample.main, argv, capsys), "--backend triton", "CUDA")
    assert not (tmp_path / "s").exists()


@pytest.mark.usefixtures("fresh_cli_logging")
def test_evaluate_a_run_without_held_out_images_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert train.main(tiny(run, "--eval-fraction", "0")) == 0
    argv = ["--ckpt", str(run), "--steps", "2", "--num-samples", "4", "--out", str(tmp_path / "e")]
    assert_one_line_error(*run_cli(evaluate.main, argv, capsys), "--eval-fraction 0", "--ref")
    assert not (tmp_path / "e").exists()
