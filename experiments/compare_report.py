"""The report of experiments/compare_backbones.py: every finished cell summary of a results
folder, per dataset and model as mean ± sample standard deviation over seeds, at equal steps and
at equal training compute, written as ``table.md``, ``table.json`` and one ``curves-<dataset>.png``
per dataset (FID against images seen, training FLOPs and wall-clock)."""
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from table1_report import format_cell, mean_std
from xswin_fast.runs.config import ConfigError

BEST_METRICS = (("fid", "FID", 2), ("kid_mean", "KID", 4), ("precision", "precision", 3), ("recall", "recall", 3))


def read_summaries(results: Path) -> List[Dict[str, Any]]:
    """Every cell summary under ``results``/cells, sorted by dataset, model and seed."""
    cells = [json.loads(p.read_text()) for p in sorted((results / "cells").glob("*.json"))]
    return sorted(cells, key=lambda c: (c["dataset"], c["model"], c["seed"]))


def _summary(values: Sequence[float]) -> Optional[Dict[str, Any]]:
    if not values:
        return None
    mean, std = mean_std(values)
    return dict(mean=mean, std=std, values=list(values))


def fid_at_flops(points: List[Dict[str, Any]], flops: float) -> Optional[float]:
    """FID at ``flops`` training FLOPs, linear in log FLOPs between the two checkpoints around
    it; None outside the measured range."""
    for a, b in zip(points, points[1:]):
        if a["train_flops"] <= flops <= b["train_flops"]:
            w = math.log(flops / a["train_flops"]) / math.log(b["train_flops"] / a["train_flops"])
            return a["fid"] + w * (b["fid"] - a["fid"])
    exact = [p["fid"] for p in points if p["train_flops"] == flops]
    return exact[0] if exact else None


def aggregate(cells: List[Dict[str, Any]], order: Sequence[str] = ()) -> Dict[str, Dict[str, Any]]:
    """Per dataset, per model (those of ``order`` first): seeds, parameters, FLOPs per image,
    the final and best-CFG metrics, the curves' mean and std per checkpoint, and at the dataset's
    equal-compute budget (the smallest final training FLOPs among its models) the FID read off
    the curve and, where a compute-matched cell exists (``matched_steps``), its final FID: the
    equal-compute FID is the latter where present."""
    matched = [c for c in cells if c.get("matched_steps")]
    cells = [c for c in cells if not c.get("matched_steps")]
    out = {}
    for dataset in sorted({c["dataset"] for c in cells}):
        mine = [c for c in cells if c["dataset"] == dataset]
        models = [m for m in order if any(c["model"] == m for c in mine)]
        models += sorted({c["model"] for c in mine} - set(models))
        budget = min(max(p["train_flops"] for p in c["points"]) for c in mine)
        rows = {}
        for model in models:
            runs = [c for c in mine if c["model"] == model]
            steps = sorted({p["step"] for c in runs for p in c["points"]})
            curve = []
            for step in steps:
                at = [p for c in runs for p in c["points"] if p["step"] == step]
                curve.append(dict(step=step, images=at[0]["images"], train_flops=at[0]["train_flops"],
                                  fid=_summary([p["fid"] for p in at]), train_seconds=_summary([p["train_seconds"] for p in at])))
            at_budget = [f for f in (fid_at_flops(c["points"], budget) for c in runs) if f is not None]
            trained = [c for c in matched if (c["dataset"], c["model"]) == (dataset, model)]
            fid_matched = _summary([c["points"][-1]["fid"] for c in trained])
            rows[model] = dict(
                seeds=[c["seed"] for c in runs], params=runs[0]["params"], train_flops_per_image=runs[0]["train_flops_per_image"],
                final_step=max(steps), final_fid=_summary([c["points"][-1]["fid"] for c in runs]),
                best_cfg=[c["best_cfg"] for c in runs], best_interior=[c["best_interior"] for c in runs],
                best={k: _summary([c["best"][k] for c in runs]) for k, _, _ in BEST_METRICS},
                train_seconds=_summary([c["train_seconds"] for c in runs]), fid_read_off=_summary(at_budget),
                fid_matched=fid_matched, matched_steps=trained[0]["matched_steps"] if trained else None,
                fid_at_budget=fid_matched or _summary(at_budget), curve=curve,
                last_change=_summary([last_change(c["points"]) for c in runs if len(c["points"]) > 1]),
            )
        out[dataset] = dict(budget_flops=budget, models=rows)
    return out


def last_change(points: List[Dict[str, Any]]) -> float:
    """The relative FID change over a run's last checkpoint interval: how flat its curve ends."""
    return points[-1]["fid"] / points[-2]["fid"] - 1


def _percent(summary: Optional[Dict[str, Any]]) -> str:
    if summary is None:
        return "n/a"
    return format_cell(dict(summary, mean=100 * summary["mean"], std=None if summary["std"] is None else 100 * summary["std"]), 0) + "%"


def spread_gap(a: Optional[Dict[str, Any]], b: Optional[Dict[str, Any]]) -> str:
    """(a - b) in pooled sample standard deviations, as text ("n/a" without two seeds each)."""
    if not a or not b or a["std"] is None or b["std"] is None:
        return "n/a"
    pooled = math.sqrt((a["std"] ** 2 + b["std"] ** 2) / 2)
    return "0" if a["mean"] == b["mean"] else ("inf" if pooled == 0 else f"{(a['mean'] - b['mean']) / pooled:+.1f}")


def _best_of(rows: Dict[str, Any], key: str) -> Optional[Dict[str, Any]]:
    summaries = [r[key] for r in rows.values() if r[key]]
    return min(summaries, key=lambda s: s["mean"]) if summaries else None


def markdown(data: Dict[str, Dict[str, Any]], recipe: Dict[str, Any], cells: List[Dict[str, Any]]) -> str:
    lines = [
        "# Which backbone? XSwin, USwin, UViT and DiT on " + " and ".join(data), "",
        "Recipe: " + ", ".join(f"{k} {v}" for k, v in sorted(recipe.items())) + ".", "",
        "Machines: " + "; ".join(sorted({c["machine"] for c in cells})) + ". Commits: "
        + ", ".join(sorted({c["commit"] for c in cells})) + ".", "",
        "Mean ± sample standard deviation over the n training seeds; the held-out set is the same for every seed. "
        "Δ: the gap to the best row in pooled standard deviations (|Δ| < 2: within the spread of 3 seeds). "
        "Last interval: the relative FID change between the last two checkpoints (how flat the curve ends).", "",
    ]
    for dataset, d in data.items():
        rows = d["models"]
        top_final, top_best, top_budget = (_best_of(rows, "final_fid"), _best_of({m: dict(b=r["best"]["fid"]) for m, r in rows.items()}, "b"),
                                           _best_of(rows, "fid_at_budget"))
        lines += [f"## {dataset}: at equal steps ({max(r['final_step'] for r in rows.values())})", "",
                  "| model | params | train GFLOPs / image | n | FID, CFG " + f"{recipe['curve_cfg']:g} | Δ | best CFG per seed "
                  "| FID, best CFG | Δ | KID | precision | recall | training min | last interval |",
                  "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
        for model, r in rows.items():
            cfgs = ", ".join(f"{c:g}" + ("" if ok else " (edge)") for c, ok in zip(r["best_cfg"], r["best_interior"]))
            minutes = dict(r["train_seconds"], mean=r["train_seconds"]["mean"] / 60,
                           std=None if r["train_seconds"]["std"] is None else r["train_seconds"]["std"] / 60)
            lines.append(
                f"| {model} | {r['params'] / 1e6:.3f}M | {r['train_flops_per_image'] / 1e9:.3f} | {len(r['seeds'])} | "
                f"{format_cell(r['final_fid'], 2)} | {spread_gap(r['final_fid'], top_final)} | {cfgs} | "
                f"{format_cell(r['best']['fid'], 2)} | {spread_gap(r['best']['fid'], top_best)} | "
                + " | ".join(format_cell(r["best"][k], dec) for k, _, dec in BEST_METRICS[1:])
                + f" | {format_cell(minutes, 1)} | {_percent(r['last_change'])} |")
        lines += ["", f"## {dataset}: at equal training compute ({d['budget_flops'] / 1e12:.2f} TFLOPs, the smallest final "
                  "budget of the models)", "",
                  "Read off: the FID of the full schedule's curve at this compute (linear in log FLOPs); for a costlier model "
                  "a point where its learning rate has not decayed yet. Matched: the final FID of a schedule of its own decayed to 0 at this compute (the "
                  "models costing over 5% more than the cheapest). Δ compares the matched FID where there is one.", "",
                  f"| model | steps at this compute | FID, CFG {recipe['curve_cfg']:g}: read off | matched (n) | Δ |",
                  "|---|---:|---:|---:|---:|"]
        for model, r in rows.items():
            steps = r["matched_steps"] or d["budget_flops"] / r["train_flops_per_image"] / recipe["batch_size"]
            if r["fid_matched"]:
                matched = f"{format_cell(r['fid_matched'], 2)} ({len(r['fid_matched']['values'])})"
            else:
                matched = "not run yet" if steps < 0.95 * r["final_step"] else "not needed"
            lines.append(f"| {model} | {steps:.0f} | {format_cell(r['fid_read_off'], 2)} | {matched} | "
                         f"{spread_gap(r['fid_at_budget'], top_budget)} |")
        lines += ["", f"![FID against images seen, training FLOPs and wall-clock](curves-{dataset}.png)", ""]
    return "\n".join(lines)


def plot(dataset: str, rows: Dict[str, Any], path: Path) -> Path:
    """FID (mean ± std over seeds) against images seen, training FLOPs and training wall-clock."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for model, r in rows.items():
        curve = r["curve"]
        mean = [p["fid"]["mean"] for p in curve]
        std = [p["fid"]["std"] or 0.0 for p in curve]
        xs = ([p["images"] for p in curve], [p["train_flops"] for p in curve], [p["train_seconds"]["mean"] / 60 for p in curve])
        for ax, x in zip(axes, xs):
            line, = ax.plot(x, mean, marker="o", label=model)
            ax.fill_between(x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.2)
        if r["fid_matched"]:  # the compute-matched schedule's final FID, on the FLOPs axis
            budget = r["matched_steps"] * r["train_flops_per_image"] * curve[0]["images"] / curve[0]["step"]
            axes[1].plot([budget], [r["fid_matched"]["mean"]], marker="*", markersize=12, color=line.get_color(), linestyle="")
    for ax, label in zip(axes, ("images seen", "training FLOPs (forward + backward)", "training wall-clock (min)")):
        ax.set_xlabel(label)
        ax.set_ylabel("FID (held out)")
        ax.set_yscale("log")
    axes[1].set_xscale("log")
    axes[0].legend()
    fig.suptitle(dataset)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(results: Path, order: Sequence[str] = ()) -> List[Path]:
    """Write table.md, table.json and the curves from the cell summaries in ``results``."""
    cells = read_summaries(results) if (results / "cells").is_dir() else []
    if not cells:
        raise ConfigError(f"no finished cells in {results}/cells: run the experiment first")
    recipe = json.loads((results / "recipe.json").read_text())
    data = aggregate(cells, order)
    (results / "table.md").write_text(markdown(data, recipe, cells))
    (results / "table.json").write_text(json.dumps(dict(recipe=recipe, datasets=data), indent=2))
    curves = [plot(dataset, d["models"], results / f"curves-{dataset}.png") for dataset, d in data.items()]
    return [results / "table.md", results / "table.json", *curves]
