"""Rules and report: one row per configuration and target, the rules --check enforces, and the
Markdown tables."""
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

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


RULES = ("fit", "half-spills", "collapse", "tensor-cores")
_TARGETS_BY_NAME = {t.name: t for t in TARGETS.values()}


def _finding(r: dict) -> Optional[Tuple[str, str, str]]:
    """The first rule a compiled row breaks, as (rule, target, finding), or None."""
    where = f"{r['kernel']} [{r['config']}; {r['pointers']}; {r['num_warps']} warps] on {r['target']}"
    spill = r.get("spill_stores", 0) + r.get("spill_loads", 0)
    spilled = f"spills {r.get('spill_stores')} B / {r.get('spill_loads')} B at {r.get('regs')} registers"
    if r["status"] != "OK":
        return "fit", r["target"], f"{where}: {r['status']}: {r.get('error')}"
    if not r.get("loads"):
        # every kernel here reads its inputs from global memory: a binary without a global load
        # is a body Triton replaced (on sm_100a, a tensor-memory overflow compiles to a trap)
        return "fit", r["target"], f"{where}: compiled to no global load ({r.get('regs')} registers): a trap or empty body"
    if spill and {"bf16", "fp16"} & set(r["preset_precisions"]):
        return "half-spills", r["target"], f"{where}: {spilled} (a 16-bit preset configuration must not spill)"
    if spill and r["regs"] < 64:
        return "collapse", r["target"], f"{where}: {spilled} (no configuration may spill below 64 registers)"
    expected = _TARGETS_BY_NAME[r["target"]].tensor_cores
    if r.get("tensor_core_dots") and not set(r.get("mma") or {}) & set(expected):
        return "tensor-cores", r["target"], (f"{where}: {r['tensor_core_dots']} tl.dot(s) of tensor-core precision compiled to none of "
                                f"{', '.join(expected)}")
    return None


def problems(rows: Sequence[dict], errors: Sequence[tuple] = ()) -> List[Tuple[str, str, str]]:
    """The rules (docs/gpu_fitness.md) as (rule, target, finding), on every target: "fit": every
    launched configuration compiles to a body that loads its inputs and fits, and no replayed
    launch fails; "half-spills": no
    bf16/fp16 configuration of a preset spills; "collapse": no configuration spills below 64
    registers; "tensor-cores": every ``tl.dot`` that a tensor core can run (16-bit or tf32
    operands) compiles to the target's tensor-core instructions."""
    out = [("fit", msg.partition(":")[0], f"launch error ({_label(label)}, batch {batch}): {msg}")
           for label, batch, msg in errors]
    return out + [f for f in map(_finding, rows) if f is not None]


def enforced(rule: str, target: str, rules: Sequence[str]) -> bool:
    """Whether ``--rules`` enforces ``rule`` on ``target``: listed alone (every target) or as
    ``rule@target``."""
    return rule in rules or f"{rule}@{target}" in rules


def summary(rows: Sequence[dict], rejected: Sequence[tuple], found: Sequence[str]) -> str:
    per = []
    for target in sorted({r["target"] for r in rows}, reverse=True):
        mine = [r for r in rows if r["target"] == target]
        status = defaultdict(int)
        for r in mine:
            status[r["status"]] += 1
        spills = sum(1 for r in mine if r.get("spill_stores"))
        tc = sum(1 for r in mine if r.get("mma"))
        occupancy = [r["occupancy"] for r in mine if r["status"] == "OK"]
        occ = f", occupancy {min(occupancy):.0%}-{max(occupancy):.0%}" if occupancy else ""
        per.append(f"{target}: {status['OK']}/{len(mine)} OK" + "".join(f", {n} {s}" for s, n in sorted(status.items())
                                                                         if s != "OK") + f", {spills} spill, {tc} tensor cores{occ}")
    return (f"compile-check: {len({r['key'] for r in rows})} kernel configurations; " + "; ".join(per) +
            f"; {len(rejected)} calls rejected up front; {len(found)} problems")


def _median(values: Sequence[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2]


def target_summary(rows: Sequence[dict], rejected: Sequence[tuple]) -> str:
    """Per target: configurations, what breaks which rule, tensor cores, occupancy, and the preset
    calls rejected up front (they run on the reference with ``backend=None``)."""
    lines = ["| target | example card (SMs) | configs | OK | 16-bit preset spills | collapses | tensor-core configs "
             "| occupancy min / median | preset calls rejected up front |",
             "|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for target in sorted({r["target"] for r in rows}, key=lambda n: _TARGETS_BY_NAME[n].arch):
        mine = [r for r in rows if r["target"] == target]
        ok = [r for r in mine if r["status"] == "OK"]
        rules = defaultdict(int)
        for r in mine:
            f = _finding(r)
            if f is not None:
                rules[f[0]] += 1
        occ = [r["occupancy"] for r in ok]
        spec = _TARGETS_BY_NAME[target]
        preset_rejected = sum(1 for label, _, msg in rejected if label[0] == "preset" and msg.startswith(target + ":"))
        lines.append(f"| {target} | {spec.gpu} ({spec.sms}) | {len(mine)} | {len(ok)} | {rules['half-spills']} | "
                     f"{rules['collapse']} | {sum(1 for r in ok if r.get('mma'))} | "
                     f"{format(min(occ), '.0%') if occ else '-'} / {format(_median(occ), '.0%') if occ else '-'} | "
                     f"{preset_rejected} |")
    return "\n".join(lines)


def rejected_table(rejected: Sequence[tuple]) -> str:
    """The calls rejected up front, one row per (target, call, reason), batches merged."""
    groups = defaultdict(set)
    for label, batch, msg in rejected:
        target, _, reason = msg.partition(": ")
        groups[(target, _label(label), reason)].add(batch)
    lines = ["| target | call | batches | reason |", "|---|---|---|---|"]
    for (target, call, reason), batches in sorted(groups.items()):
        shown = ", ".join("model" if b is None else str(b) for b in sorted(batches, key=lambda b: -1 if b is None else b))
        lines.append(f"| {target} | {call} | {shown} | {reason} |")
    return "\n".join(lines)


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
    lines = ["| kernel | target | configs | not OK | max regs | max spill (B) | max smem (KiB) | occupancy min / median "
             "| tensor cores |", "|---|---|---:|---:|---:|---:|---:|---|---|"]
    for (kernel, target), rs in sorted(groups.items(), key=lambda g: (g[0][0], _TARGETS_BY_NAME[g[0][1]].arch)):
        ok = [r for r in rs if r["status"] == "OK"]
        mma = sorted({k for r in ok for k in (r.get("mma") or {})}) or ["none"]
        lines.append(
            f"| {kernel} | {target} | {len(rs)} | {len(rs) - len(ok)} | {max((r['regs'] for r in ok), default='-')} | "
            f"{max((r['spill_stores'] for r in ok), default='-')} | "
            f"{max((r.get('shared') or 0 for r in rs), default=0) / 1024:.1f} | "
            f"{format(min(r['occupancy'] for r in ok), '.0%') if ok else '-'} / "
            f"{format(_median([r['occupancy'] for r in ok]), '.0%') if ok else '-'} | {', '.join(mma)} |")
    return "\n".join(lines)
