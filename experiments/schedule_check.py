"""Is the comparison's budget long enough? The same cells trained on twice the schedule, against
the core's: per (dataset, model), the final FID (at the curve's guidance and at the best one) of
the core recipe and of the doubled one, the change, and whether it is within the core seeds'
spread; per dataset, whether the ranking of the models moves. Written as ``schedule_check.md``
and ``schedule_check.json`` in the long recipe's results folder.

    python experiments/compare_backbones.py --seeds 1 --steps 6000 --eval-every 1200 \\
        --out RUNS-6000 --results docs/results/compare-backbones-6000      # seed 0, doubled
    python experiments/schedule_check.py --short docs/results/compare-backbones \\
        --long docs/results/compare-backbones-6000

A cell pair counts as flat when doubling the schedule moves its FID by at most twice the sample
standard deviation of the core's seeds (n/a with fewer than two). Only seeds present in both
folders are paired.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from compare_report import read_summaries
from table1_report import mean_std
from xswin_fast.runs.config import ConfigError

METRICS = (("final", "FID, curve CFG"), ("best", "FID, best CFG"))


def _fid(cell: Dict[str, Any], metric: str) -> float:
    return cell["points"][-1]["fid"] if metric == "final" else cell["best"]["fid"]


def _ranking(rows: Dict[str, Dict[str, Any]], key: str) -> List[str]:
    return sorted(rows, key=lambda m: rows[m][key])


def compare_schedules(short: List[Dict[str, Any]], long: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Per dataset: per model the mean FID of the paired seeds under both recipes (``<metric>_short``,
    ``<metric>_long``, their relative change and the core's seed std for each of METRICS, and
    ``flat``), and the models' rankings under both recipes."""
    out = {}
    for dataset in sorted({c["dataset"] for c in long}):
        rows = {}
        for model in sorted({c["model"] for c in long if c["dataset"] == dataset}):
            mine = {c["seed"]: c for c in short if (c["dataset"], c["model"]) == (dataset, model)}
            pairs = [(mine[c["seed"]], c) for c in long if (c["dataset"], c["model"]) == (dataset, model) and c["seed"] in mine]
            if not pairs:
                continue
            row = dict(seeds=[b["seed"] for _, b in pairs], steps_short=pairs[0][0]["points"][-1]["step"],
                       steps_long=pairs[0][1]["points"][-1]["step"], flat=True)
            for metric, _ in METRICS:
                a, b = (mean_std([_fid(p[i], metric) for p in pairs])[0] for i in (0, 1))
                std = mean_std([_fid(c, metric) for c in mine.values()])[1] if len(mine) > 1 else None
                within = None if std is None else abs(b - a) <= 2 * std
                row.update({f"{metric}_short": a, f"{metric}_long": b, f"{metric}_change": b / a - 1,
                            f"{metric}_seed_std": std, f"{metric}_within_spread": within})
                row["flat"] = row["flat"] and bool(within)
            rows[model] = row
        if rows:
            out[dataset] = dict(models=rows, **{f"ranking_{metric}_{r}": _ranking(rows, f"{metric}_{r}")
                                                for metric, _ in METRICS for r in ("short", "long")})
    return out


def _yes_no(value: Optional[bool]) -> str:
    return "n/a" if value is None else ("yes" if value else "no")


def markdown(data: Dict[str, Any]) -> str:
    lines = ["# Is the budget long enough? The core recipe against twice its schedule", "",
             "Per cell pair the same dataset, model and seed; the change is the doubled schedule's FID over the core's. "
             "Within spread: the change is at most twice the sample standard deviation of the core's seeds.", ""]
    for dataset, d in data.items():
        lines += [f"## {dataset}", "", "| model | seeds | steps | " + " | ".join(
            f"{label}: core | doubled | change | within spread" for _, label in METRICS) + " |",
                  "|---|---|---|" + "---:|---:|---:|---|" * len(METRICS)]
        for model, r in d["models"].items():
            cells = [f"{r[f'{m}_short']:.2f} | {r[f'{m}_long']:.2f} | {100 * r[f'{m}_change']:+.0f}% | "
                     f"{_yes_no(r[f'{m}_within_spread'])}" for m, _ in METRICS]
            lines.append(f"| {model} | {', '.join(map(str, r['seeds']))} | {r['steps_short']} → {r['steps_long']} | "
                         + " | ".join(cells) + " |")
        lines.append("")
        for m, label in METRICS:
            same = d[f"ranking_{m}_short"] == d[f"ranking_{m}_long"]
            lines.append(f"- Ranking by {label}: core {' < '.join(d[f'ranking_{m}_short'])}; doubled "
                         f"{' < '.join(d[f'ranking_{m}_long'])} ({'unchanged' if same else 'changed'}).")
        lines.append("")
    return "\n".join(lines)


def write_check(short: Path, long: Path) -> List[Path]:
    """Write schedule_check.md and schedule_check.json into ``long``."""
    for folder in (short, long):
        if not (folder / "cells").is_dir():
            raise ConfigError(f"no cell summaries in {folder}/cells: run the experiment first")
    data = compare_schedules(read_summaries(short), read_summaries(long))
    if not data:
        raise ConfigError(f"no cell of {long} has a finished pair (same dataset, model and seed) in {short}")
    (long / "schedule_check.md").write_text(markdown(data))
    (long / "schedule_check.json").write_text(json.dumps(data, indent=2))
    return [long / "schedule_check.md", long / "schedule_check.json"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", type=Path, default=Path("docs/results/compare-backbones"), help="the core recipe's results")
    parser.add_argument("--long", type=Path, default=Path("docs/results/compare-backbones-6000"), help="the doubled recipe's results")
    args = parser.parse_args(argv)
    try:
        for path in write_check(args.short, args.long):
            print(path)
    except ConfigError as e:
        print(f"schedule_check.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
