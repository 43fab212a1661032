"""experiments/compare_backbones.py on tiny data: both datasets end to end in two shards, a
finished cell (its summary) never redone, a killed cell resumed exactly from its checkpoint,
the sweep extended until its best scale is interior, and the report's compute matching."""
import json

import pytest

from xswin_fast.checkpoints import load_checkpoint

from helpers import experiment_modules
from test_cli_errors import assert_one_line_error, run_cli
from test_fashion_mnist import write_fashion_mnist

MODELS = ["DiT-digits"]
TINY = [
    "--models", ",".join(MODELS), "--seeds", "1", "--steps", "4", "--eval-every", "2", "--batch-size", "16",
    "--warmup", "0", "--num-samples", "20", "--selection-samples", "20", "--cfg-sweep", "1,2", "--sample-steps", "2",
    "--threads", "1", "--backend", "torch", "--ckpt-every", "1",
]


@pytest.fixture(scope="module")
def compare():
    with experiment_modules("compare_backbones", "compare_report") as modules:
        yield modules


@pytest.fixture(scope="module")
def experiment(compare, tmp_path_factory):
    """(argv, run folders, results folder, every cell summary) of a finished tiny experiment run as two shards."""
    from xswin_fast.evaluation.digits_extractor import train_digits_extractor
    from xswin_fast.evaluation.fashion_extractor import train_fashion_extractor

    tmp = tmp_path_factory.mktemp("compare")
    data = write_fashion_mnist(tmp / "fashion", n_train=64, n_test=30)
    argv = [*TINY, "--out", str(tmp / "out"), "--results", str(tmp / "results"), "--data-dir", str(data),
            "--digits-extractor-weights", str(train_digits_extractor(tmp / "digits.pt", epochs=1, verbose=False)),
            "--fashion-extractor-weights", str(train_fashion_extractor(tmp / "fashion.pt", data, epochs=1, verbose=False))]
    for shard in ("0/2", "1/2"):
        assert compare[0].main([*argv, "--shard", shard]) == 0
    cells = {p.stem: json.loads(p.read_text()) for p in (tmp / "results" / "cells").glob("*.json")}
    return argv, tmp / "out", tmp / "results", cells


def test_both_datasets_are_scored_along_training_and_reported(experiment):
    argv, out, results, cells = experiment
    assert sorted(cells) == ["digits-DiT-digits-seed0", "fashion-mnist-DiT-digits-seed0"]
    for name, cell in cells.items():
        assert [p["step"] for p in cell["points"]] == [2, 4] and [p["images"] for p in cell["points"]] == [32, 64]
        assert cell["points"][1]["train_flops"] == pytest.approx(2 * cell["points"][0]["train_flops"])
        assert cell["train_flops_per_image"] == pytest.approx(2.0e8, rel=0.01)  # DiT-digits: 3x its forward
        assert 0 < cell["points"][0]["train_seconds"] < cell["points"][1]["train_seconds"]
        assert cell["best_interior"] or len(cell["sweep_fid_train"]) == 10 or cell["best_cfg"] == 0  # the sweep's floor
        assert cell["best"]["num_samples"] == 20 and cell["recipe"]["steps"] == 4
    assert cells["fashion-mnist-DiT-digits-seed0"]["model_kwargs"] == {"patch_size": 2}
    # trained in parts (to step 2, then 4), the cosine spans the whole recipe: 0 at step 4 only
    lrs = [load_checkpoint(out / "digits-DiT-digits-seed0" / "checkpoints" / f"{s:07d}.pt")["opt"]["param_groups"][0]["lr"]
           for s in (3, 4)]
    assert lrs[0] > 0 and lrs[1] == 0 and cell["recipe"]["lr_schedule"] == "cosine"
    table = json.loads((results / "table.json").read_text())
    assert set(table["datasets"]) == {"digits", "fashion-mnist"}
    for dataset, d in table["datasets"].items():
        row = d["models"]["DiT-digits"]
        assert row["final_fid"]["values"] == [cells[f"{dataset}-DiT-digits-seed0"]["points"][-1]["fid"]]
        assert row["fid_at_budget"]["values"] == row["final_fid"]["values"]  # the only model sets the budget
        assert (results / f"curves-{dataset}.png").stat().st_size > 0
    assert "## fashion-mnist: at equal training compute" in (results / "table.md").read_text()


def test_the_held_out_set_is_the_same_for_every_seed(compare, experiment):
    argv, *_ = experiment
    args = compare[0].parse_args(argv)
    for dataset in ("digits", "fashion-mnist"):
        spec = compare[0].load_dataset(dataset, args)
        again = compare[0].load_dataset(dataset, args)
        assert spec.held_out.equal(again.held_out) and spec.held_out_labels == again.held_out_labels
    digits_split = json.loads((experiment[1] / "digits-DiT-digits-seed0" / "split.json").read_text())
    assert digits_split["seed"] == compare[0].DIGITS_SPLIT_SEED and len(digits_split["eval"]) == 359


def test_a_finished_cell_is_never_redone(compare, experiment, capsys):
    argv, out, results, _ = experiment
    kept = [*results.glob("cells/*.json"), *out.glob("*/checkpoints/*.pt")]
    before = {p: p.stat().st_mtime_ns for p in kept}
    capsys.readouterr()
    assert compare[0].main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in kept} == before
    assert capsys.readouterr().out.count("finished earlier, kept") == 2


def test_a_killed_cell_resumes_from_its_checkpoint_exactly(compare, experiment):
    argv, out, results, cells = experiment
    name = "fashion-mnist-DiT-digits-seed0"
    run, summary = out / name, results / "cells" / f"{name}.json"
    progress = json.loads((run / "progress.json").read_text())
    # what a kill during training after the step-3 checkpoint leaves: no summary, no step-4 score
    summary.unlink()
    (run / "checkpoints" / "0000004.pt").unlink()
    progress.update(points=progress["points"][:1], sessions=progress["sessions"][:1], sweep={}, best=None)
    (run / "progress.json").write_text(json.dumps(progress))
    assert compare[0].main(argv) == 0
    assert "resumed from" in (run / "log.txt").read_text()
    resumed = json.loads(summary.read_text())
    assert [p["fid"] for p in resumed["points"]] == [p["fid"] for p in cells[name]["points"]]
    untimed = lambda metrics: {k: v for k, v in metrics.items() if k != "sample_seconds"}  # noqa: E731
    assert resumed["sweep_fid_train"] == cells[name]["sweep_fid_train"]
    assert untimed(resumed["best"]) == untimed(cells[name]["best"])
    assert resumed["points"][1]["train_seconds_estimated"]  # the killed session's step 2 -> 3 has no record


def test_the_flow_column_trains_flow_cells_sampled_with_euler(compare, experiment, tmp_path):
    argv, *_ = experiment
    flow = [*argv, "--datasets", "digits", "--objective", "flow", "--out", str(tmp_path / "out"),
            "--results", str(tmp_path / "results")]
    assert compare[0].main(flow) == 0
    cell = json.loads((tmp_path / "results" / "cells" / "digits-DiT-digits-seed0.json").read_text())
    assert (cell["recipe"]["objective"], cell["recipe"]["sampler"]) == ("flow", "euler") and len(cell["points"]) == 2
    config = json.loads((tmp_path / "out" / "digits-DiT-digits-seed0" / "config.json").read_text())
    assert (config["objective"], config["sample_sampler"]) == ("flow", "euler")


def test_the_plan_lists_each_cell_of_the_shard_with_its_state(compare, experiment, capsys):
    argv, *_ = experiment
    capsys.readouterr()
    assert compare[0].main([*argv, "--plan", "--shard", "1/2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["cell fashion-mnist-DiT-digits-seed0: finished", "1 cells"]
    assert compare[0].main([*argv, "--plan", "--seeds", "2"]) == 0
    assert "cell digits-DiT-digits-seed1: to do" in capsys.readouterr().out


def test_another_recipe_in_the_same_results_is_refused(compare, experiment):
    argv, *_ = experiment
    with pytest.raises(SystemExit, match=r"holds cells of another recipe \(steps 4 -> 6\)"):
        compare[0].main([*argv, "--steps", "6"])


class FakeCell:
    """next_scale's view of a cell: its sweep so far and the first scales."""

    def __init__(self, module, sweep, first=(1.0, 2.0, 3.0, 4.0)):
        self.progress, self.args = dict(sweep={f"{k:g}": v for k, v in sweep.items()}), type("A", (), {"cfg_sweep": list(first)})
        self.next_scale = module.Cell.next_scale.__get__(self)


def test_the_sweep_extends_past_a_best_at_either_edge(compare):
    Cell = compare[0]
    assert FakeCell(Cell, {1.0: 5.0}).next_scale() == 2.0
    assert FakeCell(Cell, {1.0: 5.0, 2.0: 4.0, 3.0: 3.0, 4.0: 2.0}).next_scale() == 6.0
    assert FakeCell(Cell, {1.0: 5.0, 2.0: 4.0, 3.0: 3.0, 4.0: 2.0, 6.0: 1.0}).next_scale() == 9.0
    assert FakeCell(Cell, {1.0: 1.0, 2.0: 4.0, 3.0: 5.0, 4.0: 6.0}).next_scale() == 0.5
    assert FakeCell(Cell, {0.0: 0.5, 0.5: 1.0, 1.0: 1.0, 2.0: 4.0, 3.0: 5.0, 4.0: 6.0}).next_scale() is None  # 0: the floor
    assert FakeCell(Cell, {1.0: 3.0, 2.0: 1.0, 3.0: 2.0, 4.0: 5.0}).next_scale() is None


def test_fid_at_equal_compute_interpolates_in_log_flops(compare):
    fid_at_flops = compare[1].fid_at_flops
    points = [dict(train_flops=1e12, fid=20.0), dict(train_flops=4e12, fid=10.0)]
    assert fid_at_flops(points, 2e12) == pytest.approx(15.0)
    assert fid_at_flops(points, 4e12) == 10.0 and fid_at_flops(points, 5e12) is None and fid_at_flops(points, 5e11) is None


def test_wall_clock_fills_in_a_session_without_a_record(compare):
    sessions = [dict(start=0, end=100, seconds=50.0), dict(start=150, end=200, seconds=25.0)]
    assert compare[0].wall_clock(sessions, 100) == (50.0, False)
    assert compare[0].wall_clock(sessions, 200) == (pytest.approx(100.0), True)


@pytest.mark.parametrize("argv, message", [
    (["--datasets", "cifar"], "--datasets"),
    (["--shard", "2/2"], "--shard"),
    (["--steps", "5", "--eval-every", "2", "--warmup", "0"], "--eval-every"),
    (["--models", "NoSuchNet"], "--models"),
    (["--objective", "flow", "--sampler", "ddim"], "--sampler ddim does not fit --objective flow"),
])
def test_bad_arguments_fail_in_one_line(compare, argv, message, capsys):
    assert_one_line_error(*run_cli(compare[0].main, argv, capsys), message)


def test_missing_fashion_mnist_fails_in_one_line(compare, tmp_path, capsys):
    argv = [*TINY, "--datasets", "fashion-mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "o"),
            "--results", str(tmp_path / "r")]
    assert_one_line_error(*run_cli(compare[0].main, argv, capsys), "apt-get install dataset-fashion-mnist")


def test_recipe_flags_reproduce_a_recipe(compare):
    cb = compare[0]
    args = cb.parse_args(["--steps", "6000", "--eval-every", "1200", "--lr-schedule", "constant", "--objective", "flow",
                          "--sampler", "euler", "--cfg-sweep", "1,1.5,3"])
    recipe = cb.recipe_of(args)
    assert cb.recipe_of(cb.parse_args(cb.recipe_flags(recipe))) == recipe


def test_only_the_patchifying_families_take_the_fashion_patch(compare, experiment, tmp_path, capsys):
    cb = compare[0]
    argv = [*experiment[0], "--datasets", "fashion-mnist", "--models", "DiT-digits,DiffiT-digits", "--fashion-patch", "4",
            "--out", str(tmp_path / "out"), "--results", str(tmp_path / "results")]
    args = cb.parse_args(argv)
    assert cb.geometry("fashion-mnist", "DiT-digits", args) == (16, {"patch_size": 4})
    assert cb.geometry("fashion-mnist", "DiffiT-digits", args) == (16, {})  # image space: no patches
    assert cb.geometry("digits", "DiffiT-digits", args) == (8, {})
    assert cb.main([*argv, "--plan"]) == 0  # counts both families' FLOPs for the compute-matched cells
    assert "fashion-mnist-DiffiT-digits-seed0" in capsys.readouterr().out


def test_a_costlier_model_gets_a_compute_matched_cell(compare, experiment, tmp_path, capsys):
    argv = [*experiment[0], "--datasets", "digits", "--models", "USwin-digits,DiT-digits", "--out", str(tmp_path / "out"),
            "--results", str(tmp_path / "results")]
    assert compare[0].main([*argv, "--plan"]) == 0
    assert "cell digits-DiT-digits-seed0-matched: to do (2 steps, the equal-compute budget)" in capsys.readouterr().out
    assert compare[0].main([*argv, "--plan", "--no-matched"]) == 0
    assert "matched" not in capsys.readouterr().out
    assert compare[0].main(argv) == 0
    cells = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "results" / "cells").glob("*.json")}
    assert sorted(cells) == ["digits-DiT-digits-seed0", "digits-DiT-digits-seed0-matched", "digits-USwin-digits-seed0"]
    matched = cells["digits-DiT-digits-seed0-matched"]
    assert matched["matched_steps"] == 2 and [p["step"] for p in matched["points"]] == [1, 2]  # as many checkpoints
    assert cells["digits-DiT-digits-seed0"]["matched_steps"] is None
    lrs = [load_checkpoint(tmp_path / "out" / "digits-DiT-digits-seed0-matched" / "checkpoints" / f"{s:07d}.pt")["opt"]
           ["param_groups"][0]["lr"] for s in (1, 2)]
    assert lrs[0] > 0 and lrs[1] == 0  # its own schedule, decayed to 0 at the budget
    row = json.loads((tmp_path / "results" / "table.json").read_text())["datasets"]["digits"]["models"]["DiT-digits"]
    assert row["fid_matched"]["values"] == [matched["points"][-1]["fid"]] and row["fid_at_budget"] == row["fid_matched"]
    assert len(row["seeds"]) == 1 and row["final_step"] == 4  # the matched cell stays out of the equal-steps rows
    assert "not needed" in (tmp_path / "results" / "table.md").read_text()  # USwin: the cheapest
