"""The report of experiments/table1_digits.py: every finished cell of an experiment folder,
aggregated per model as mean ± sample standard deviation over seeds, written as ``table.md``,
``table.json`` and ``table1.png``."""
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from xswin_fast.runs.config import ConfigError

# (cell.json key, column title, decimals)
METRICS = (("fid", "FID", 2), ("isc_mean", "IS", 2), ("kid_mean", "KID", 3), ("precision", "precision", 3),
           ("recall", "recall", 3))


def mean_std(values: Sequence[float]) -> Tuple[float, Optional[float]]:
    """Mean and sample standard deviation (n - 1 in the denominator) of ``values``; the standard
    deviation is None for a single value."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_std needs at least one value")
    mean = sum(values) / n
    if n == 1:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def _summary(values: Sequence[float]) -> Dict[str, Any]:
    mean, std = mean_std(values)
    return dict(mean=mean, std=std, values=list(values))


def read_cells(out: Path) -> List[Dict[str, Any]]:
    """Every finished cell (a cell.json) under ``out``, sorted by model and seed."""
    cells = [json.loads(p.read_text()) for p in sorted(out.glob("*/cell.json"))]
    return sorted(cells, key=lambda c: (c["model"], c["seed"]))


def aggregate(cells: List[Dict[str, Any]], order: Sequence[str] = ()) -> Dict[str, Dict[str, Any]]:
    """Per model (those of ``order`` first, in that order, then the rest by name): its seeds,
    parameters, and mean / std / values of every metric at CFG 1.0 and at the selected CFG, of
    the training images/s and of the sampling seconds."""
    models = [m for m in order if any(c["model"] == m for c in cells)]
    models += sorted({c["model"] for c in cells} - set(models))
    rows = {}
    for model in models:
        mine = [c for c in cells if c["model"] == model]
        rows[model] = dict(
            seeds=[c["seed"] for c in mine],
            params=mine[0]["params"],
            best_cfg=[c["best_cfg"] for c in mine],
            **{part: {k: _summary([c[part][k] for c in mine]) for k, _, _ in METRICS} for part in ("cfg1", "best")},
            sample_seconds_cfg1=_summary([c["cfg1"]["sample_seconds"] for c in mine]),
            sample_seconds_best=_summary([c["best"]["sample_seconds"] for c in mine]),
            num_samples=mine[0]["cfg1"]["num_samples"],
        )
        speeds = [c["train_images_per_s"] for c in mine if c["train_images_per_s"] is not None]
        rows[model]["train_images_per_s"] = _summary(speeds) if speeds else None
    return rows


def format_cell(summary: Optional[Dict[str, Any]], decimals: int) -> str:
    """"mean ± std" at ``decimals`` (just the mean for one seed, "n/a" for no value)."""
    if summary is None:
        return "n/a"
    if summary["std"] is None:
        return f"{summary['mean']:.{decimals}f}"
    return f"{summary['mean']:.{decimals}f} ± {summary['std']:.{decimals}f}"


def _recipe_line(recipe: Dict[str, Any]) -> str:
    sampler = recipe["sampler"] or ("ddpm" if recipe["objective"] == "eps" else "euler")
    decay = "cosine decay to 0" if recipe["lr_schedule"] == "cosine" else "constant"
    return (
        f"{recipe['steps']} steps at batch {recipe['batch_size']}, AdamW lr {recipe['lr']:g} with {recipe['warmup']} "
        f"warm-up steps then {decay}, gradient clipping {recipe['max_grad_norm']:g}, EMA {recipe['ema_decay']} "
        f"with warm-up, objective {recipe['objective']}; {sampler} sampler, {recipe['sample_steps']} steps. CFG selected "
        f"per cell by the lowest FID of {recipe['selection_samples']} samples against the training split among "
        f"{', '.join(f'{c:g}' for c in recipe['cfg_sweep'])}; reported metrics from other samples against the held-out digits."
    )


def markdown(rows: Dict[str, Dict[str, Any]], recipe: Dict[str, Any], cells: List[Dict[str, Any]]) -> str:
    head = "| " + " | ".join(title for _, title, _ in METRICS) + " |"
    lines = [
        "# Table 1 on the digits: " + ", ".join(m.removesuffix("-digits") for m in rows), "",
        f"Recipe: {_recipe_line(recipe)}", "",
        "Machines: " + "; ".join(sorted({c["machine"] for c in cells})) + ". Commits: "
        + ", ".join(sorted({c["commit"] for c in cells})) + ".", "",
        "Mean ± sample standard deviation over the n seeds (each seed also draws its own held-out split).", "",
        "## CFG 1.0", "",
        "| model | params | n " + head + " train images/s | sampling s |",
        "|---|---:|---:" + "|---:" * len(METRICS) + "|---:|---:|",
    ]
    for model, r in rows.items():
        metrics = " | ".join(format_cell(r["cfg1"][k], d) for k, _, d in METRICS)
        lines.append(f"| {model} | {r['params'] / 1e6:.3f}M | {len(r['seeds'])} | {metrics} | "
                     f"{format_cell(r['train_images_per_s'], 0)} | {format_cell(r['sample_seconds_cfg1'], 1)} |")
    lines += ["", "## Best CFG of the sweep", "",
              "| model | CFG per seed " + head + " sampling s |", "|---|---" + "|---:" * len(METRICS) + "|---:|"]
    for model, r in rows.items():
        metrics = " | ".join(format_cell(r["best"][k], d) for k, _, d in METRICS)
        lines.append(f"| {model} | {', '.join(f'{c:g}' for c in r['best_cfg'])} | {metrics} | "
                     f"{format_cell(r['sample_seconds_best'], 1)} |")
    n = {r["num_samples"] for r in rows.values()}
    lines += ["", f"Sampling s: seconds to generate the {', '.join(map(str, sorted(n)))} report samples of one cell.", ""]
    return "\n".join(lines)


def plot(rows: Dict[str, Dict[str, Any]], path: Path) -> Path:
    """One panel per metric: a bar per model at CFG 1.0 and at the selected CFG, ± std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.6))
    x = range(len(rows))
    for ax, (key, title, _) in zip(axes, METRICS):
        for offset, part, label in ((-0.2, "cfg1", "CFG 1.0"), (0.2, "best", "best CFG")):
            s = [r[part][key] for r in rows.values()]
            ax.bar([i + offset for i in x], [v["mean"] for v in s], width=0.4, label=label,
                   yerr=[v["std"] or 0 for v in s], capsize=3)
        ax.set_xticks(list(x), [m.replace("-digits", "") for m in rows], rotation=30)
        ax.set_title(title)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(out: Path, order: Sequence[str] = ()) -> List[Path]:
    """Write table.md, table.json and table1.png from the finished cells in ``out``."""
    cells = read_cells(out) if out.is_dir() else []
    if not cells:
        raise ConfigError(f"no finished cells in {out}: run the experiment first")
    recipe = json.loads((out / "recipe.json").read_text())
    rows = aggregate(cells, order)
    (out / "table.md").write_text(markdown(rows, recipe, cells))
    (out / "table.json").write_text(json.dumps(dict(recipe=recipe, models=rows, cells=cells), indent=2))
    return [out / "table.md", out / "table.json", plot(rows, out / "table1.png")]
