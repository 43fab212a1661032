"""Turn a pytest-benchmark JSON (``--benchmark-json``) of this suite into a markdown report and plots.

    python -m pytest benchmarks/ --benchmark-only --benchmark-json bench.json
    python benchmarks/report.py bench.json --out report/

writes ``report/report.md`` (tables stamped with the device, date and commit the JSON records)
and, with matplotlib installed (``pip install -e ".[benchmark]"``), ``report/models.png``
(images/s vs resolution, XSwin vs DiT and the others), ``report/kernels.png`` (achieved
bandwidth and speedups of the kernel cases) and ``report/attention_scaling.png``. The markdown
is meant to be pasted into the README as it is (image links are relative to ``--out``).
"""
import argparse
import json
import os
import sys
from collections import defaultdict
from typing import Dict, List, Optional

KERNEL_BASELINE = {"window_attention": "reference"}  # everything else (adaLN): "eager"
IMPL_ORDER = ["reference", "eager", "reference / eager", "compile", "flex", "triton", "window-reference", "window-triton", "full-sdpa"]
BASELINE_LABEL = "reference / eager"
IMPL_COLOR = {BASELINE_LABEL: "C7", "compile": "C2", "flex": "C1", "triton": "C0"}
FAMILY_STYLE = {"XSwin": "C0", "USwin": "C2", "DiT": "C3", "UViT": "C1"}
KIND_TITLE = {"train": "training step (fwd+bwd+AdamW)", "sample": "sampling step (fwd)", "sample-cfg": "sampling step (CFG fwd)"}


# loading


def load(path: str) -> dict:
    with open(path) as f:
        data = json.load(f)
    if "benchmarks" not in data:
        raise SystemExit(f"{path}: not a pytest-benchmark JSON (no 'benchmarks' key)")
    return data


def stamp(data: dict) -> Dict[str, str]:
    """Device, date, commit and command of the run, from the JSON's machine/commit info."""
    info = data.get("machine_info", {}).get("xswin_bench", {})
    commit_info = data.get("commit_info", {})
    commit = info.get("commit") or commit_info.get("id") or "unknown"
    dirty = info.get("dirty", commit_info.get("dirty"))
    device = info.get("device") or data.get("machine_info", {}).get("cpu", {}).get("brand_raw") or "unknown device"
    return {
        "device": device,
        "device_type": info.get("device_type", "unknown"),
        "copy_GBps": info.get("copy_GBps"),
        "date": info.get("date") or data.get("datetime", "unknown date"),
        "commit": (commit[:10] + (" (with uncommitted changes)" if dirty else "")) if commit != "unknown" else commit,
        "torch": info.get("torch", "?"),
        "triton": info.get("triton", "?"),
        "cuda": info.get("cuda"),
        "command": info.get("command", "?"),
        "triton_kernels": ", ".join(info.get("triton_kernels", [])) or "none",
    }


def stamp_line(s: Dict[str, str]) -> str:
    cpu = " — CPU smoke run, not GPU results" if s["device_type"] == "cpu" else ""
    return f"{s['device']}{cpu}\n{s['date']} · commit {s['commit']}"


def rows(data: dict) -> List[dict]:
    """One flat record per benchmark: extra_info plus the timing statistics (seconds)."""
    out = []
    for b in data["benchmarks"]:
        r = dict(b.get("extra_info", {}))
        st = b.get("stats", {})
        r.update(
            group=b.get("group") or "",
            name=b.get("name"),
            median=st.get("median"),
            min=st.get("min"),
            stddev=st.get("stddev"),
            rounds=st.get("rounds"),
            iterations=st.get("iterations"),
        )
        out.append(r)
    return out


# formatting


def fmt_time(s: Optional[float]) -> str:
    if s is None:
        return "–"
    if s < 1e-3:
        return f"{s * 1e6:.1f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def fmt(v, digits=2, suffix="") -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}{suffix}"
        return f"{v:.{digits}f}{suffix}"
    return f"{v}{suffix}"


def fmt_sig(v, digits=3) -> str:
    """A small or large number with ``digits`` significant digits."""
    if v is None:
        return "–"
    return f"{v:.{digits}g}"


def table(header: List[str], body: List[List[str]], align: Optional[List[str]] = None) -> str:
    align = align or ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def shape_str(shape: dict) -> str:
    if not shape:
        return ""
    keys = [k for k in ("B", "H", "W", "C", "heads", "window", "shift") if k in shape]
    parts = []
    if "H" in shape:
        parts.append(f"B={shape['B']} {shape['H']}×{shape['W']} C={shape['C']}")
    if "heads" in shape:
        parts.append(f"h={shape['heads']}")
    if shape.get("window"):
        parts.append(f"w={shape['window']}")
    if shape.get("shift"):
        parts.append(f"s={shape['shift']}")
    return " ".join(parts) if parts else ", ".join(f"{k}={shape[k]}" for k in keys)


def impl_key(impl: str) -> int:
    return IMPL_ORDER.index(impl) if impl in IMPL_ORDER else len(IMPL_ORDER)


# sections


def kernel_section(recs: List[dict]) -> str:
    kern = [r for r in recs if r.get("group", "").startswith(("window-attn-", "adaln-")) and r.get("median")]
    if not kern:
        return ""
    out = [
        "## Kernels",
        "",
        "Median time per call; GB/s against the minimal bytes (inputs read once, outputs written once); "
        "% of the device's measured copy bandwidth; TFLOP/s; speedup = baseline time / time "
        "(baseline: `reference` for window attention, `eager` for adaLN; `× compile` compares with torch.compile).",
    ]
    for group in sorted({r["group"] for r in kern}):
        g = [r for r in kern if r["group"] == group]
        by_case = defaultdict(dict)
        for r in g:
            by_case[r.get("case")][r.get("impl")] = r
        body = []
        for case in sorted(by_case, key=str):
            impls = by_case[case]
            op = next(iter(impls.values())).get("op")
            base = impls.get(KERNEL_BASELINE.get(op, "eager"))
            comp = impls.get("compile")
            for impl in sorted(impls, key=impl_key):
                r = impls[impl]
                speed = base["median"] / r["median"] if base else None
                vs_comp = comp["median"] / r["median"] if comp and impl != "compile" else None
                body.append([
                    case, shape_str(r.get("shape", {})), impl, fmt_time(r["median"]), fmt(r.get("GBps"), 1),
                    fmt(100 * r["frac_of_copy_bw"], 1, "%") if r.get("frac_of_copy_bw") is not None else "–",
                    fmt_sig(r.get("TFLOPs")), fmt(speed, 2, "×"), fmt(vs_comp, 2, "×"),
                ])
        out += ["", f"### {group}", "", table(
            ["case", "shape", "impl", "median", "GB/s", "% copy BW", "TFLOP/s", "× baseline", "× compile"], body,
            ["---", "---", "---"] + ["---:"] * 6,
        )]
    return "\n".join(out)


def scaling_section(recs: List[dict]) -> str:
    sc = [r for r in recs if r.get("group", "").startswith("attn-scaling-") and r.get("median")]
    if not sc:
        return ""
    out = [
        "## Attention mechanism: 8×8 windows vs full attention",
        "",
        "Equal tokens per call and width (C=384, 6 heads of 64); median time per call. "
        "`full / window` divides full attention's time by the faster window implementation's.",
    ]
    impls = sorted({r["impl"] for r in sc}, key=impl_key)
    for group in sorted({r["group"] for r in sc}):
        by_map = defaultdict(dict)
        for r in sc:
            if r["group"] == group:
                by_map[r["map"]][r["impl"]] = r
        body = []
        for m in sorted(by_map):
            d = by_map[m]
            any_r = next(iter(d.values()))
            win = [d[i]["median"] for i in d if i.startswith("window")]
            ratio = d["full-sdpa"]["median"] / min(win) if "full-sdpa" in d and win else None
            body.append([f"{m}×{m}", any_r.get("tokens_per_image"), any_r.get("batch")]
                        + [fmt_time(d[i]["median"]) if i in d else "–" for i in impls] + [fmt(ratio, 2, "×")])
        out += ["", f"### {group}", "", table(["map", "tokens/image", "batch"] + impls + ["full / window"], body)]
    return "\n".join(out)


def model_records(recs: List[dict]) -> List[dict]:
    return [r for r in recs if r.get("group", "").startswith("model-") and r.get("median")]


def model_section(recs: List[dict]) -> str:
    mr = model_records(recs)
    if not mr:
        return ""
    out = [
        "## Models",
        "",
        "Images per second (batch / median step time), peak GPU memory of a step, forward GFLOPs per "
        "image (`xswin_fast.flops.forward_flops`, attention counted) and achieved TFLOP/s "
        "(training step counted as 3× forward, CFG as 2× forward).",
    ]
    for kind in ("train", "sample", "sample-cfg"):
        k = [r for r in mr if r.get("kind") == kind]
        if not k:
            continue
        k.sort(key=lambda r: (r.get("latent", 0), r.get("size", ""), list(FAMILY_STYLE).index(r.get("family")) if r.get("family") in FAMILY_STYLE else 9, r.get("backend", "")))
        body = [[
            r.get("model"), r.get("backend"), f"{r.get('image_px')} px (latent {r.get('latent')})", r.get("batch"), r.get("dtype"),
            fmt(r.get("images_per_s"), 2), fmt(r.get("peak_mem_GiB"), 2), fmt(r.get("gflops_per_image"), 2), fmt_sig(r.get("TFLOPs")),
        ] for r in k]
        out += ["", f"### {KIND_TITLE[kind]}", "", table(
            ["model", "backend", "resolution", "batch", "precision", "images/s", "peak GiB", "GFLOPs/image", "TFLOP/s"], body,
            ["---", "---", "---"] + ["---:"] * 6,
        )]
    return "\n".join(out)


def gflops_section(recs: List[dict]) -> str:
    mr = model_records(recs)
    if not mr:
        return ""
    by_model = defaultdict(dict)
    params = {}
    for r in mr:
        by_model[r["model"]][r["image_px"]] = r.get("gflops_per_image")
        params[r["model"]] = r.get("params_M")
    pxs = sorted({r["image_px"] for r in mr})
    order = sorted(by_model, key=lambda m: (m.split("-")[1], list(FAMILY_STYLE).index(m.split("-")[0]) if m.split("-")[0] in FAMILY_STYLE else 9))
    body = [[m, fmt(params[m], 2)] + [fmt(by_model[m].get(p), 2) for p in pxs] for m in order]
    return "\n".join([
        "## Forward GFLOPs per image",
        "",
        table(["model", "params (M)"] + [f"{p} px" for p in pxs], body),
    ])


def report_markdown(data: dict, images: List[str]) -> str:
    s = stamp(data)
    recs = rows(data)
    head = [
        "# xswin_fast benchmark report" + (" (CPU smoke run, not GPU results)" if s["device_type"] == "cpu" else ""),
        "",
        f"- device: **{s['device']}**" + (f", measured copy bandwidth {s['copy_GBps']:.0f} GB/s" if s["copy_GBps"] else ""),
        f"- date: {s['date']}; commit: `{s['commit']}`",
        f"- torch {s['torch']}, triton {s['triton']}" + (f", CUDA {s['cuda']}" if s["cuda"] else "") + f"; Triton kernels registered: {s['triton_kernels']}" + (" (not run: no GPU)" if s["device_type"] == "cpu" else ""),
        f"- command: `{s['command']}`",
    ]
    if s["device_type"] == "cpu":
        head.append("- **CPU run**: a smoke test of the suite, small shapes, fp32; not GPU results and not comparable with them.")
    parts = [p for p in (kernel_section(recs), scaling_section(recs), model_section(recs), gflops_section(recs)) if p]
    plots = [f"![{os.path.splitext(os.path.basename(i))[0]}]({os.path.basename(i)})" for i in images]
    return "\n".join(head) + "\n\n" + ("\n\n".join(plots) + "\n\n" if plots else "") + "\n\n".join(parts) + "\n"


# plots


def plain_log_ticks(ax) -> None:
    """Log-scale y ticks as plain numbers (3.5, 40, 1200) rather than 3.5 x 10^0."""
    from matplotlib.ticker import FuncFormatter

    f = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(f)
    ax.yaxis.set_minor_formatter(f)
    ax.tick_params(axis="y", which="minor", labelsize=7)


def save_figure(plt, fig, path) -> bool:
    """Lay out, write (PNG, 120 dpi) and close ``fig``; True, as the plot functions return."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_models(plt, recs, s, path) -> bool:
    mr = model_records(recs)
    if not mr:
        return False
    kinds = [k for k in ("train", "sample", "sample-cfg") if any(r.get("kind") == k for r in mr)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(max(5.2 * len(kinds), 9.0), 4.4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        series = defaultdict(list)
        for r in mr:
            if r.get("kind") == kind and r.get("images_per_s"):
                series[(r["model"], r["backend"])].append((r["image_px"], r["images_per_s"]))
        for (model, backend), pts in sorted(series.items()):
            pts.sort()
            fam = model.split("-")[0]
            ax.plot([p for p, _ in pts], [v for _, v in pts], marker="o",
                    color=FAMILY_STYLE.get(fam, "C7"), linestyle="-" if backend == "triton" else "--",
                    alpha=1.0 if "S/" in model else 0.6, label=f"{model} ({backend})")
        pxs = sorted({r["image_px"] for r in mr})
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(pxs)
        ax.set_xticklabels([str(p) for p in pxs])
        ax.set_xlabel("image size (px; latent = px / 8)")
        ax.set_ylabel("images / s")
        plain_log_ticks(ax)
        ax.set_title(KIND_TITLE[kind], fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle(f"Throughput: XSwin/USwin vs DiT/UViT (solid: triton backend, dashed: torch)\n{stamp_line(s)}", fontsize=10)
    return save_figure(plt, fig, path)


def plot_kernels(plt, recs, s, path) -> bool:
    kern = [r for r in recs if r.get("group", "").startswith(("window-attn-", "adaln-")) and r.get("median")]
    if not kern:
        return False
    labels, bw, speed, impls = [], defaultdict(dict), defaultdict(dict), set()
    for r in sorted(kern, key=lambda r: (r["group"], str(r.get("case")))):
        lab = f"{r['group'].replace('window-attn-', 'wa-')} {r.get('case')}"
        if lab not in labels:
            labels.append(lab)
        impl = BASELINE_LABEL if r["impl"] in ("reference", "eager") else r["impl"]
        impls.add(impl)
        if r.get("frac_of_copy_bw") is not None:
            bw[impl][lab] = 100 * r["frac_of_copy_bw"]
    for lab in labels:
        recs_lab = [r for r in kern if f"{r['group'].replace('window-attn-', 'wa-')} {r.get('case')}" == lab]
        op = recs_lab[0].get("op")
        base = next((r for r in recs_lab if r["impl"] == KERNEL_BASELINE.get(op, "eager")), None)
        for r in recs_lab:
            if base and r is not base:
                speed[r["impl"]][lab] = base["median"] / r["median"]
    impls = sorted(impls, key=impl_key)
    panels = [("% of copy bandwidth (minimal bytes)", bw, False)]
    if speed:
        panels.append(("speedup over reference / eager (×)", speed, True))
    height = max(4.0, 0.18 * len(labels) * max(1, len(impls)) / 2 + 1.5)
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), height), squeeze=False)
    for ax, (title, vals, is_speed) in zip(axes[0], panels):
        present = [i for i in impls if vals.get(i)]
        n = max(len(present), 1)
        w = 0.8 / n
        for j, impl in enumerate(present):
            ys = [k + j * w for k in range(len(labels))]
            ax.barh(ys, [vals[impl].get(lab, 0) for lab in labels], height=w, label=impl, color=IMPL_COLOR.get(impl))
        ax.set_yticks([k + 0.4 - w / 2 for k in range(len(labels))])
        ax.set_yticklabels(labels, fontsize=6)
        ax.invert_yaxis()
        if is_speed:
            from matplotlib.ticker import FuncFormatter

            ax.axvline(1.0, color="k", lw=0.8)
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel(title)
        ax.grid(True, axis="x", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Kernels\n{stamp_line(s)}", fontsize=10)
    return save_figure(plt, fig, path)


def plot_scaling(plt, recs, s, path) -> bool:
    sc = [r for r in recs if r.get("group", "").startswith("attn-scaling-") and r.get("median")]
    if not sc:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    series = defaultdict(list)
    for r in sc:
        series[(r["impl"], r["mode"])].append((r["tokens_per_image"], r["median"] / (r["batch"] * r["tokens_per_image"]) * 1e9))
    for (impl, mode), pts in sorted(series.items()):
        pts.sort()
        ax.plot([p for p, _ in pts], [v for _, v in pts], marker="o", linestyle="-" if mode == "fwd" else "--",
                color="C3" if impl == "full-sdpa" else ("C0" if impl == "window-triton" else "C2"), label=f"{impl} {mode}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("tokens per image (map H×W)")
    ax.set_ylabel("ns per token")
    plain_log_ticks(ax)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"Window (8×8) vs full attention, C=384, equal tokens per call\n{stamp_line(s)}", fontsize=8)
    return save_figure(plt, fig, path)


def make_plots(data: dict, out: str) -> List[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[benchmark]'): no plots", file=sys.stderr)
        return []
    s, recs = stamp(data), rows(data)
    made = []
    for name, fn in (("models.png", plot_models), ("kernels.png", plot_kernels), ("attention_scaling.png", plot_scaling)):
        path = os.path.join(out, name)
        if fn(plt, recs, s, path):
            made.append(path)
    return made


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", help="pytest-benchmark JSON written with --benchmark-json")
    parser.add_argument("--out", default="bench_report", help="output folder (default: bench_report)")
    parser.add_argument("--no-plots", action="store_true", help="markdown only")
    args = parser.parse_args(argv)
    data = load(args.json)
    os.makedirs(args.out, exist_ok=True)
    images = [] if args.no_plots else make_plots(data, args.out)
    md = report_markdown(data, images)
    path = os.path.join(args.out, "report.md")
    with open(path, "w") as f:
        f.write(md)
    print(md)
    print(f"wrote {path}" + "".join(f", {p}" for p in images), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
