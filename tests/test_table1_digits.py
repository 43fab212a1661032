"""experiments/table1_digits.py: a tiny-budget experiment end to end, a second invocation that
retrains nothing, a killed cell that resumes exactly, the mean ± std aggregation, the matched
digits presets, and one-line errors for bad arguments."""
import json
import math
import re

import pytest

from helpers import experiment_modules
from xswin_fast import create_model

MODELS = ["XSwin-digits", "DiT-digits"]
TINY = [
    "--models", ",".join(MODELS), "--seeds", "1", "--steps", "2", "--batch-size", "16", "--warmup", "0",
    "--num-samples", "20", "--selection-samples", "20", "--cfg-sweep", "1,2", "--sample-steps", "2",
    "--threads", "1", "--backend", "torch", "--ckpt-every", "1",
]


@pytest.fixture(scope="module")
def table1():
    with experiment_modules("table1_digits", "table1_report") as modules:
        yield modules


@pytest.fixture(scope="module")
def experiment(table1, tmp_path_factory):
    """(argv, out folder, the cell.json of every cell) of a finished tiny experiment."""
    from xswin_fast.evaluation.digits_extractor import train_digits_extractor

    tmp = tmp_path_factory.mktemp("table1")
    weights = train_digits_extractor(tmp / "digits_cnn.pt", epochs=1, verbose=False)
    argv = [*TINY, "--out", str(tmp / "out"), "--digits-extractor-weights", str(weights)]
    assert table1[0].main(argv) == 0
    cells = {m: json.loads((tmp / "out" / f"{m}-seed0" / "cell.json").read_text()) for m in MODELS}
    return argv, tmp / "out", cells


def params(name):
    return sum(p.numel() for p in create_model(name).parameters() if p.requires_grad)


def test_a_tiny_experiment_writes_the_table(experiment, tmp_path):
    argv, out, cells = experiment
    table = json.loads((out / "table.json").read_text())
    assert list(table["models"]) == MODELS
    for name, row in table["models"].items():
        assert row["seeds"] == [0] and row["params"] == params(name)
        assert row["cfg1"]["fid"]["values"] == [cells[name]["cfg1"]["fid"]]
        assert row["best_cfg"][0] in (1.0, 2.0) and row["train_images_per_s"]["mean"] > 0
        assert all(math.isfinite(row[part][k]["mean"]) for part in ("cfg1", "best") for k in row["cfg1"])
    assert table["recipe"]["steps"] == 2 and table["recipe"]["cfg_sweep"] == [1.0, 2.0]
    text = (out / "table.md").read_text()
    assert f"| XSwin-digits | 0.745M | 1 | {cells['XSwin-digits']['cfg1']['fid']:.2f} |" in text
    assert (out / "table1.png").stat().st_size > 0


def test_the_reported_numbers_are_what_evaluate_py_gives(experiment, tmp_path):
    from xswin_fast.cli import evaluate

    argv, out, cells = experiment
    weights = argv[argv.index("--digits-extractor-weights") + 1]
    assert evaluate.main([
        "--ckpt", str(out / "DiT-digits-seed0"), "--sampler", "ddpm", "--steps", "2", "--cfg-scale", "1", "--seed", "0",
        "--num-samples", "20", "--backend", "torch", "--threads", "1", "--digits-extractor-weights", weights,
        "--out", str(tmp_path), "--no-progress",
    ]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["fid"] == pytest.approx(cells["DiT-digits"]["cfg1"]["fid"], rel=1e-9)
    assert metrics["recall"] == pytest.approx(cells["DiT-digits"]["cfg1"]["recall"], rel=1e-9)


def test_a_second_invocation_retrains_and_rescores_nothing(table1, experiment, capsys):
    argv, out, _ = experiment
    kept = [p for cell in out.glob("*-seed0") for p in (*cell.glob("checkpoints/*.pt"), cell / "cell.json")]
    before = {p: p.stat().st_mtime_ns for p in kept}
    assert len(before) == 2 * 3  # two cells: checkpoints of steps 1 and 2, and cell.json
    capsys.readouterr()
    assert table1[0].main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in kept} == before
    assert capsys.readouterr().out.count("finished earlier, kept") == 2


def test_a_killed_cell_resumes_from_its_checkpoint_exactly(table1, experiment):
    argv, out, cells = experiment
    cell = out / "DiT-digits-seed0"
    other = out / "XSwin-digits-seed0" / "cell.json"
    other_mtime = other.stat().st_mtime_ns
    # what a kill after the step-1 checkpoint leaves behind
    for name in ("cell.json", "training_sessions.json", "checkpoints/0000002.pt"):
        (cell / name).unlink()
    assert table1[0].main(argv) == 0
    assert "resumed from" in (cell / "log.txt").read_text()
    resumed = json.loads((cell / "cell.json").read_text())
    assert resumed["cfg1"]["fid"] == cells["DiT-digits"]["cfg1"]["fid"]
    assert resumed["best"]["fid"] == cells["DiT-digits"]["best"]["fid"]
    assert json.loads((cell / "training_sessions.json").read_text())[0]["steps"] == 1
    assert other.stat().st_mtime_ns == other_mtime


def test_another_recipe_or_model_in_the_same_folder_is_refused(table1, experiment):
    argv, out, _ = experiment
    with pytest.raises(SystemExit, match=r"holds cells of another recipe \(steps 2 -> 3\)"):
        table1[0].main([*argv, "--steps", "3"])
    with pytest.raises(SystemExit, match=r"XSwin-digits-seed0 was built with --model-kwargs \{\}, not \{\"depth"):
        table1[0].main([*argv, "--model-kwargs", 'XSwin-digits={"depths": [1, 1], "num_heads": [1, 2]}'])


def fake_cell(model, seed, fid, speed):
    metrics = dict(fid=fid, isc_mean=2.0, kid_mean=0.5, precision=0.5, recall=0.25, sample_seconds=1.0, num_samples=359)
    return dict(model=model, seed=seed, params=1000, best_cfg=1.5, train_images_per_s=speed, cfg1=metrics,
                best=dict(metrics, fid=fid / 2))


def test_the_aggregate_is_the_mean_and_sample_std_over_seeds(table1):
    _, report = table1
    cells = [fake_cell("B", 0, 1.0, 100.0), fake_cell("B", 1, 2.0, 110.0), fake_cell("B", 2, 4.0, 90.0),
             fake_cell("A", 0, 3.0, None)]
    rows = report.aggregate(cells, order=["B"])
    assert list(rows) == ["B", "A"]
    fid = rows["B"]["cfg1"]["fid"]
    assert fid["mean"] == pytest.approx(7 / 3)
    assert fid["std"] == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert rows["B"]["best"]["fid"]["mean"] == pytest.approx(7 / 6)
    assert rows["B"]["train_images_per_s"]["std"] == pytest.approx(10.0)
    assert report.format_cell(fid, 2) == "2.33 ± 1.53"
    assert rows["A"]["cfg1"]["fid"]["std"] is None and report.format_cell(rows["A"]["cfg1"]["fid"], 2) == "3.00"
    assert rows["A"]["train_images_per_s"] is None


@pytest.mark.parametrize("name", ["USwin-digits", "UViT-digits", "DiT-digits", "DiffiT-digits", "ASCEND-digits", "IUViT-digits"])
def test_the_digits_presets_match_xswin_digits_within_10_percent(name):
    assert abs(params(name) / params("XSwin-digits") - 1) <= 0.10
    model = create_model(name)
    assert getattr(model, "patch_size", 1) == 1 and model.in_channels == 1 and model.num_classes == 10
    if name == "USwin-digits":
        assert model.window_size == (2, 2) and not model.cross_attention_skips


@pytest.mark.parametrize("argv, message", [
    (["--models", "XSwin-digits,Nope"], "unknown model Nope"),
    (["--seeds", "0"], "--seeds: expected an integer >= 1"),
    (["--cfg-sweep", "0.5,2"], "guidance scales >= 1"),
    (["--model-kwargs", "DiT-S/2={}"], "which --models does not list"),
    (["--model-kwargs", "DiT-digits=[1]"], "expected NAME=JSON object"),
    (["--warmup", "400"], r"--warmup must be in \[0, --steps\)"),
    (["--sampler", "euler"], "does not fit --objective eps"),
    (["--lr", "0"], "--lr must be > 0"),
])
def test_bad_arguments_fail_in_one_line(table1, argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        table1[0].main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("table1_digits.py: error:")
    assert re.search(message, err), err


def test_report_only_without_finished_cells_fails_in_one_line(table1, tmp_path):
    with pytest.raises(SystemExit, match="no finished cells in"):
        table1[0].main(["--report-only", "--out", str(tmp_path)])
