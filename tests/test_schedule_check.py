"""experiments/schedule_check.py: the core recipe's cells against the same cells on a doubled
schedule, paired by dataset, model and seed; flat within twice the core seeds' spread; rankings."""
import json

import pytest

from helpers import experiment_modules
from test_cli_errors import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def check():
    with experiment_modules("schedule_check") as (module,):
        yield module


def cell(model, seed, steps, fid, best, dataset="digits"):
    return dict(dataset=dataset, model=model, seed=seed, points=[dict(step=steps // 2, fid=2 * fid), dict(step=steps, fid=fid)],
                best=dict(fid=best))


def write(folder, cells):
    (folder / "cells").mkdir(parents=True)
    for c in cells:
        (folder / "cells" / f"{c['dataset']}-{c['model']}-seed{c['seed']}.json").write_text(json.dumps(c))
    return folder


SHORT = [cell("A", 0, 3000, 1.20, 1.00), cell("A", 1, 3000, 1.10, 0.90), cell("A", 2, 3000, 1.30, 1.10),
         cell("B", 0, 3000, 1.25, 0.95), cell("B", 1, 3000, 1.27, 0.97)]
LONG = [cell("A", 0, 6000, 1.15, 0.70), cell("B", 0, 6000, 0.80, 0.60), cell("C", 0, 6000, 0.5, 0.5)]


def test_pairs_by_seed_and_judges_the_change_against_the_core_spread(check):
    d = check.compare_schedules(SHORT, LONG)["digits"]
    assert set(d["models"]) == {"A", "B"}  # C has no core cell: not paired
    a, b = d["models"]["A"], d["models"]["B"]
    assert a["seeds"] == [0] and (a["steps_short"], a["steps_long"]) == (3000, 6000)
    assert a["final_short"] == 1.20 and a["final_long"] == 1.15 and a["final_change"] == pytest.approx(1.15 / 1.20 - 1)
    assert a["final_seed_std"] == pytest.approx(0.1)  # seeds 1.1, 1.2, 1.3
    assert a["final_within_spread"] and not a["best_within_spread"] and not a["flat"]  # best moved 0.3 > 2 x 0.1
    assert not b["final_within_spread"] and not b["flat"]
    assert d["ranking_final_short"] == ["A", "B"] and d["ranking_final_long"] == ["B", "A"]


def test_a_single_core_seed_has_no_spread(check):
    d = check.compare_schedules([cell("A", 0, 3000, 1.2, 1.0)], [cell("A", 0, 6000, 1.2, 1.0)])["digits"]["models"]["A"]
    assert d["final_seed_std"] is None and d["final_within_spread"] is None and not d["flat"]


def test_writes_the_table_and_fails_in_one_line_without_pairs(check, tmp_path, capsys):
    short, long = write(tmp_path / "short", SHORT), write(tmp_path / "long", LONG)
    assert check.main(["--short", str(short), "--long", str(long)]) == 0
    text = (long / "schedule_check.md").read_text()
    assert "| A | 0 | 3000 → 6000 | 1.20 | 1.15 | -4% | yes |" in text and "(changed)" in text
    assert json.loads((long / "schedule_check.json").read_text())["digits"]["models"]["B"]["final_long"] == 0.8
    other = write(tmp_path / "other", [cell("Z", 5, 6000, 1.0, 1.0)])
    assert_one_line_error(*run_cli(check.main, ["--short", str(short), "--long", str(other)], capsys), "no cell", "finished pair")
    assert_one_line_error(*run_cli(check.main, ["--short", str(tmp_path / "none"), "--long", str(long)], capsys), "no cell summaries")
