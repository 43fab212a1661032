"""tools/probe_inputs.py: its classification of outcomes, and its fast kinds (bad op inputs and
model keyword arguments, no training) run in this process, every probe refused in one line. The
CLI, folder and checkpoint kinds need tiny trainings: ``python tools/probe_inputs.py`` runs them
(docs/results/probes)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import probe_cases  # noqa: E402
from probe_inputs import run_probe, summary  # noqa: E402
from xswin_fast.checkpoints import CheckpointError  # noqa: E402


def probe(call, names=("x",), cli=False):
    return probe_cases.Probe("p", lambda tmp: call(), tuple(names), cli)


def fail(exc):
    def call():
        raise exc
    return call


@pytest.mark.parametrize("call,cli,outcome", [
    (fail(ValueError("x must be >= 1, got 0")), False, "one-line"),
    (fail(CheckpointError("x.pt: no 'model' entry")), False, "one-line"),
    (fail(ValueError("y must be >= 1")), False, "unclear"),  # does not name x
    (fail(ValueError("x must be\n>= 1")), False, "unclear"),  # two lines
    (fail(RuntimeError("x: mixed dtype")), False, "traceback"),
    (fail(KeyError("x")), False, "traceback"),
    (lambda: None, False, "silent"),
    (fail(SystemExit("prog: error: --x must be > 0")), True, "one-line"),
    (fail(SystemExit(0)), True, "silent"),
    (lambda: 0, True, "silent"),
    (lambda: 1, True, "unclear"),  # a non-zero status without a message
    (fail(ValueError("x bad")), True, "traceback"),  # escaped a CLI's main
], ids=["ValueError", "CheckpointError", "wrong name", "two lines", "RuntimeError", "KeyError", "returned",
        "CLI error", "CLI exit 0", "CLI returns 0", "CLI returns 1", "CLI exception"])
def test_outcomes_are_classified(call, cli, outcome, tmp_path):
    assert run_probe(probe(call, cli=cli), tmp_path)[0] == outcome


def test_summary_counts_and_lists_what_is_not_one_line():
    records = [{"kind": "ops", "name": "a", "outcome": "one-line", "detail": ""},
               {"kind": "ops", "name": "b", "outcome": "silent", "detail": "accepted"}]
    text = summary(records, ["ops"])
    assert "| ops | 2 | 1 | 0 | 0 | 1 | 0 |" in text and "- ops / b: **silent** (accepted)" in text


@pytest.mark.parametrize("kind", ["ops", "model-kwargs"])
def test_every_fast_probe_is_refused_in_one_line(kind, tmp_path):
    results = {p.name: run_probe(p, tmp_path) for p in probe_cases.cases(kind, probe_cases.Fixtures.read(tmp_path))}
    assert len(results) > 15
    bad = {name: r for name, r in results.items() if r[0] != "one-line"}
    assert not bad, bad
