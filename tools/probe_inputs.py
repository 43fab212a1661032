"""Bad-input and fault probes, run as a demanding user would: every outcome is classified.

    python tools/probe_inputs.py                          # every kind (a few minutes on 2 CPU cores)
    python tools/probe_inputs.py --kinds ops,model-kwargs --summary probes.md

Kinds (cases in ``probe_cases.py``): bad flags of train.py, sample.py and evaluate.py, XSwinPipeline
call arguments, from_pretrained of damaged model folders, damaged checkpoints, bad op inputs and
bad model keyword arguments. Each probe is one input that must be refused. Its outcome is

* ``one-line``: refused with one line that names what ``Probe.names`` lists (a CLI: a non-zero
  exit and one line on stderr, or for a run that stops, one ERROR log line; the API: a
  ValueError, TypeError, OSError or the project's CheckpointError, ConfigError or DataError,
  whose message is one line);
* ``unclear``: refused, but on several lines or without naming the argument;
* ``traceback``: any other exception (a CLI's escapes ``main``; the API's is not one of those three);
* ``silent``: accepted (a CLI exits 0; the API returns);
* ``crash``: the process died (a signal, or past ``--timeout``).

Each kind runs in its own process (so a crash is seen as one), on the tiny runs built first into
``--work`` (1-step trainings of a small XSwin on the digits, an eps run, a flow run and one without
held-out images). Exit status 0 when every probe is ``one-line``.
"""
import argparse
import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

OUTCOMES = ("one-line", "unclear", "traceback", "silent", "crash")


def api_errors() -> tuple:
    """The exceptions an API call may refuse an input with: ValueError, TypeError, OSError and the
    project's own errors for checkpoints, settings and data (what the CLIs report in one line)."""
    from xswin_fast.cli.user_errors import USER_ERRORS

    return (ValueError, TypeError, *USER_ERRORS)


def _message_outcome(message: str, names) -> str:
    lines = [line for line in str(message).splitlines() if line.strip()]
    ok = len(lines) == 1 and "Traceback" not in lines[0] and all(n in lines[0] for n in names)
    return "one-line" if ok else "unclear"


class _Errors(logging.Handler):
    """The package's ERROR lines (train.py reports a diverged run as one, and exits 2)."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.lines: List[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def run_probe(probe, tmp: Path) -> Tuple[str, str]:
    """(outcome, the message or what happened) of one ``probe_cases.Probe`` run in this process."""
    err, errors = io.StringIO(), _Errors()
    logging.getLogger("xswin_fast").addHandler(errors)
    try:
        return _run_probe(probe, tmp, err, errors)
    finally:
        logging.getLogger("xswin_fast").removeHandler(errors)


def _run_probe(probe, tmp: Path, err: io.StringIO, errors: _Errors) -> Tuple[str, str]:
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            result = probe.call(tmp)
    except SystemExit as exc:
        if not probe.cli:
            return "traceback", f"SystemExit({exc.code!r})"
        message = err.getvalue() + (exc.code if isinstance(exc.code, str) else "")  # what the user's stderr shows
        if exc.code in (0, None):
            return "silent", "exit status 0"
        return _message_outcome(message, probe.names), " ".join(str(message).split())
    except Exception as exc:  # the probe's subject raised: classify it
        one = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        if probe.cli or not isinstance(exc, api_errors()):
            where = traceback.extract_tb(exc.__traceback__)[-1]
            return "traceback", f"{one[:300]} (at {Path(where.filename).name}:{where.lineno})"
        return _message_outcome(str(exc), probe.names), one
    if probe.cli and result not in (0, None):
        if not errors.lines:
            return "unclear", f"exit status {result} without a message"
        return _message_outcome("\n".join(errors.lines), probe.names), " ".join(" | ".join(errors.lines).split())
    return "silent", "accepted" if not probe.cli else "exit status 0"


def _quiet_process() -> None:
    """No warnings and no package log lines on the streams a probe's message is read from."""
    warnings.simplefilter("ignore")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    log = logging.getLogger("xswin_fast")
    handler = logging.NullHandler()
    handler._xswin_cli = True  # what cli.process.log_to_stdout looks for: it adds no stdout handler
    log.addHandler(handler)
    for name in ("diffusers", "accelerate", "torch_fidelity"):
        logging.getLogger(name).setLevel(logging.ERROR)


def worker(kind: str, work: Path, out: Path) -> None:
    """Run one kind's probes in this process, appending one JSON line per probe to ``out``
    (its start first, so that the parent knows which probe a crash interrupted)."""
    import probe_cases

    _quiet_process()
    fixtures = probe_cases.Fixtures.read(work)
    with out.open("a") as f:
        for probe in probe_cases.cases(kind, fixtures):
            f.write(json.dumps({"kind": kind, "name": probe.name, "start": True}) + "\n")
            f.flush()
            with tempfile.TemporaryDirectory(dir=work) as tmp:
                start = time.perf_counter()
                outcome, detail = run_probe(probe, Path(tmp))
            f.write(json.dumps({"kind": kind, "name": probe.name, "outcome": outcome, "detail": detail,
                                "seconds": round(time.perf_counter() - start, 2)}) + "\n")
            f.flush()


def _subprocess(args: List[str], timeout: float) -> Optional[int]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("TRITON_INTERPRET", None)  # a user's CPU: no interpreter
    try:
        return subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], env=env, timeout=timeout,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode
    except subprocess.TimeoutExpired:
        return None


def _read_records(path: Path, kind: str, status: Optional[int]) -> List[Dict]:
    """The finished probes of ``kind``, and the one a crash or timeout interrupted."""
    records, started = [], None
    for line in path.read_text().splitlines() if path.exists() else []:
        r = json.loads(line)
        if r.get("start"):
            started = r
        else:
            records.append(r)
            started = None
    if started is not None or status != 0:
        what = "timed out" if status is None else f"exit status {status}"
        name = started["name"] if started else "(before the first probe)"
        records.append({"kind": kind, "name": name, "outcome": "crash", "detail": f"the probe process {what}"})
    return records


def run_all(kinds: List[str], work: Path, timeout: float) -> List[Dict]:
    status = _subprocess(["--build-fixtures", "--work", str(work)], timeout)
    if status != 0:
        raise SystemExit(f"probe_inputs.py: error: building the tiny runs into {work} failed (exit status {status})")
    records = []
    for kind in kinds:
        out = work / f"{kind}.jsonl"
        out.unlink(missing_ok=True)  # from an earlier run in the same --work
        status = _subprocess(["--worker", kind, "--work", str(work), "--jsonl", str(out)], timeout)
        records += _read_records(out, kind, status)
    return records


def summary(records: List[Dict], kinds: List[str]) -> str:
    """A markdown summary: counts per kind and outcome, then every probe that is not one-line."""
    rows = ["| kind | probes | " + " | ".join(OUTCOMES) + " |", "|---|---:|" + "---:|" * len(OUTCOMES)]
    for kind in [*kinds, "all"]:
        mine = [r for r in records if kind == "all" or r["kind"] == kind]
        counts = Counter(r["outcome"] for r in mine)
        rows.append(f"| {kind} | {len(mine)} | " + " | ".join(str(counts[o]) for o in OUTCOMES) + " |")
    bad = [r for r in records if r["outcome"] != "one-line"]
    lines = rows + ["", f"Not one-line: {len(bad)}"] + [f"- {r['kind']} / {r['name']}: **{r['outcome']}** "
                                                         f"({r['detail']})" for r in bad]
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    import probe_cases

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", default=",".join(probe_cases.KINDS), help=f"comma-separated subset of {probe_cases.KINDS}")
    p.add_argument("--work", help="folder for the tiny runs and probe scratch (default: a temporary folder)")
    p.add_argument("--timeout", type=float, default=900, help="seconds one kind may take before it counts as a crash")
    p.add_argument("--summary", help="also write the markdown summary here")
    p.add_argument("--records", help="also write every probe's outcome here (JSON)")
    p.add_argument("--build-fixtures", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--jsonl", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.build_fixtures:
        _quiet_process()
        probe_cases.Fixtures.build(Path(args.work))
        return 0
    if args.worker:
        worker(args.worker, Path(args.work), Path(args.jsonl))
        return 0
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in probe_cases.KINDS]
    if unknown or not kinds:
        p.error(f"--kinds must be a comma-separated subset of {','.join(probe_cases.KINDS)}, got {args.kinds!r}")
    with contextlib.ExitStack() as stack:
        work = Path(args.work) if args.work else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        records = run_all(kinds, work, args.timeout)
    text = summary(records, kinds) + f"\n{len(records)} probes in {time.perf_counter() - start:.0f} s\n"
    print(text, end="")
    if args.summary:
        Path(args.summary).write_text(text)
    if args.records:
        Path(args.records).write_text(json.dumps(records, indent=1) + "\n")
    return 0 if all(r["outcome"] == "one-line" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
