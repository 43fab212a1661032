"""Rules and report: one row per configuration and target, the rules --check enforces, and the
Markdown tables."""
from collections import defaultdict
from typing import Dict, List, Sequence, Tuple

from ..op_calls import OpCall
from .targets import TARGETS


def _label(label: tuple) -> str:
    kind, name, latent, precision = label
    return f"{name}@{latent} {precision}" if kind == "preset" else f"sweep {name} {precision}"


def build_rows(specs: Dict[str, dict], results: Dict[str, dict], sources: Dict[str, set],
               calls: Sequence[Tuple[int, OpCall, set]]) -> List[dict]:
    """One row per configuration and target: what it is, what it costs, where it is launched from."""
    rows = []
    for key, spec in specs.items():
        labels = {label for index, _ in sources[key] for label in calls[index][2]}
        batches = sorted({b for _, b in sources[key] if b is not None})
        pointers = sorted({v[1:] for v in spec["signature"].values() if isinstance(v, str) and v.startswith("*")})
        rows.append(dict(
            key=key, kernel=spec["kernel"], target=TARGETS[spec["arch"]].name,
            config=" ".join(f"{n}={v}" for n, v in spec["params"].items()), pointers="+".join(pointers),
            num_warps=spec["options"]["num_warps"], num_stages=spec["options"]["num_stages"],
            preset_precisions=sorted({lab[3] for lab in labels if lab[0] == "preset"}),
            precisions=sorted({lab[3] for lab in labels}), sources=sorted(_label(lab) for lab in labels),
            batches=batches, **{k: v for k, v in results.get(key, dict(status="NOT COMPILED")).items() if k != "num_warps"},
        ))
    return sorted(rows, key=lambda r: (r["kernel"], r["target"], r["config"], r["pointers"]))


RULES = ("fit", "half-spills", "fp32-spills")


def problems(rows: Sequence[dict], errors: Sequence[tuple] = ()) -> List[Tuple[str, str]]:
    """The rules (docs/gpu_fitness.md) as (rule, finding) pairs: "fit": every launched
    configuration compiles and fits on both targets, and no replayed launch fails; "half-spills": no
    bf16/fp16 configuration of a preset spills on sm_90a; "fp32-spills": no fp32 configuration
    spills below 64 registers."""
    out = [("fit", f"launch error ({_label(label)}, batch {batch}): {msg}") for label, batch, msg in errors]
    for r in rows:
        where = f"{r['kernel']} [{r['config']}; {r['pointers']}; {r['num_warps']} warps] on {r['target']}"
        spill = r.get("spill_stores", 0) + r.get("spill_loads", 0)
        if r["status"] != "OK":
            out.append(("fit", f"{where}: {r['status']}: {r.get('error')}"))
        elif spill and r["target"] == TARGETS[90].name and {"bf16", "fp16"} & set(r["preset_precisions"]):
            out.append(("half-spills", f"{where}: spills {r['spill_stores']} B / {r['spill_loads']} B at {r['regs']} "
                        f"registers (a 16-bit preset configuration must not spill)"))
        elif spill and r["regs"] < 64 and "fp32" in r["precisions"]:
            out.append(("fp32-spills", f"{where}: spills {r['spill_stores']} B / {r['spill_loads']} B at {r['regs']} "
                        f"registers (an fp32 configuration must not spill below 64 registers)"))
    return out


def summary(rows: Sequence[dict], rejected: Sequence[tuple], found: Sequence[str]) -> str:
    per = []
    for target in sorted({r["target"] for r in rows}, reverse=True):
        mine = [r for r in rows if r["target"] == target]
        status = defaultdict(int)
        for r in mine:
            status[r["status"]] += 1
        spills = sum(1 for r in mine if r.get("spill_stores"))
        tc = sum(1 for r in mine if r.get("mma"))
        per.append(f"{target}: {status['OK']}/{len(mine)} OK" + "".join(f", {n} {s}" for s, n in sorted(status.items())
                                                                         if s != "OK") + f", {spills} spill, {tc} tensor cores")
    return (f"compile-check: {len({r['key'] for r in rows})} kernel configurations; " + "; ".join(per) +
            f"; {len(rejected)} calls rejected up front; {len(found)} problems")


def _loads(r: dict) -> str:
    return " ".join(f"{n}x{w}" for w, n in (r.get("loads") or {}).items()) or "-"


def markdown(rows: Sequence[dict], header: str) -> str:
    lines = [header, "",
             "| kernel | target | config | pointers | warps | status | regs | spill st/ld (B) | smem (KiB) "
             "| occupancy | tensor cores | global loads (count x bits) | launched by |",
             "|---|---|---|---|---:|---|---:|---:|---:|---:|---|---|---|"]
    for r in rows:
        ok = r["status"] == "OK"
        mma = ", ".join(f"{k} {v}" for k, v in (r.get("mma") or {}).items()) or "none"
        src = ", ".join(r["sources"][:3]) + (f" (+{len(r['sources']) - 3})" if len(r["sources"]) > 3 else "")
        batches = f"; B {r['batches'][0]}-{r['batches'][-1]}" if r["batches"] else ""
        smem = f"{r['shared'] / 1024:.1f}" if r.get("shared") is not None else "-"
        lines.append(
            f"| {r['kernel']} | {r['target']} | {r['config']} | {r['pointers']} | {r['num_warps']} | {r['status']} | "
            f"{r['regs'] if ok else '-'} | {str(r['spill_stores']) + '/' + str(r['spill_loads']) if ok else '-'} | "
            f"{smem} | {format(r['occupancy'], '.0%') if ok else '-'} | {mma if ok else '-'} | "
            f"{_loads(r) if ok else '-'} | {src}{batches} |")
    return "\n".join(lines)


def kernel_summary(rows: Sequence[dict]) -> str:
    """Per kernel and target: configurations, worst registers / spill / shared memory / occupancy."""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["kernel"], r["target"])].append(r)
    lines = ["| kernel | target | configs | not OK | max regs | max spill (B) | max smem (KiB) | min occupancy "
             "| tensor cores |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for (kernel, target), rs in sorted(groups.items()):
        ok = [r for r in rs if r["status"] == "OK"]
        mma = sorted({k for r in ok for k in (r.get("mma") or {})}) or ["none"]
        lines.append(
            f"| {kernel} | {target} | {len(rs)} | {len(rs) - len(ok)} | {max((r['regs'] for r in ok), default='-')} | "
            f"{max((r['spill_stores'] for r in ok), default='-')} | "
            f"{max((r.get('shared') or 0 for r in rs), default=0) / 1024:.1f} | "
            f"{format(min(r['occupancy'] for r in ok), '.0%') if ok else '-'} | {', '.join(mma)} |")
    return "\n".join(lines)
