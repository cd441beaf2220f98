"""Human-readable views of report.json: the stage table printed at the end and report.md. The task's metrics
fill the fidelity columns (classifiers: top-1 agreement, max |Δlogit|, accuracy)."""

from __future__ import annotations

DEFAULT_COLUMNS = [["top1_agreement", "top1 agree"], ["max_abs_error", "max |Δlogit|"], ["accuracy", "accuracy"]]


def _fmt_int(n: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _fmt(key: str, v) -> str:
    if v is None:
        return "-"
    return f"{v:.2e}" if "error" in key else f"{v:.4f}"


def _head(report: dict) -> list[str]:
    cols = report.get("columns") or DEFAULT_COLUMNS
    return ["stage", "params", "×orig", "FLOPs", "×orig", *[h for _, h in cols], "s"]


def stage_rows(report: dict) -> list[list[str]]:
    base = report["stages"][0]
    cols = report.get("columns") or DEFAULT_COLUMNS
    rows = []
    for r in report["stages"]:
        rows.append([r["kind"], _fmt_int(r["params"]), f"{r['params'] / base['params']:.3f}", _fmt_int(r["flops"]),
                     f"{r['flops'] / base['flops']:.3f}", *[_fmt(k, r.get(k)) for k, _ in cols], f"{r['seconds']:.1f}"])
    return rows


def stage_table(report: dict) -> str:
    head = _head(report)
    rows = [head] + stage_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    verdict = "validation: " + verdict_word(report["validation"])
    return "\n".join([line(rows[0]), line(["-" * w for w in widths])] + [line(r) for r in rows[1:]] + [verdict])


def verdict_word(v: dict) -> str:
    """PASSED / FAILED, or NOT RUN: a run without a validate stage validated nothing and must not say passed."""
    if v.get("passed") is None:
        return "NOT RUN" + (f" ({v['note']})" if v.get("note") else "")
    return "PASSED" if v["passed"] else "FAILED"


def render_markdown(report: dict) -> str:
    head = _head(report)
    out = [f"# {report['name']}", "", f"Recipe `{report['recipe']}` (sha256 `{report['recipe_sha256'][:12]}…`); "
           f"fidelity measured on {report['probe']}.", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in stage_rows(report)]
    for r in report["stages"]:
        groups = (r.get("details") or {}).get("groups")
        if groups:
            out += ["", f"## {r['kind']}: channel groups", "", "| group | before | after | fused | layers |", "|---|---|---|---|---|"]
            out += [f"| {g['group']} | {g['before']} | {g['after']} | {'yes' if g['fused'] else 'no'} | {len(g['layers'])} |"
                    for g in groups]
    q = report.get("quantization")
    if q:
        out += ["", "## Quantization", "", f"settings: `{q.get('settings')}`", ""]
        out += [f"- kept in float: `{f['node']}` ({f['why']})" for f in q.get("float", [])] or ["- every quantizable op is INT8"]
        if len(q.get("candidates", [])) > 1:
            out += ["", "| candidate | agreement | output error | speed vs FP32 |", "|---|---|---|---|"]
            out += [_candidate_row(c, c["settings"] == q.get("settings")) for c in q["candidates"]]
    v = report["validation"]
    out += ["", "## Validation", "", f"**{verdict_word(v)}**", ""]
    for c in v.get("checks", []):
        obs = c.get("observed", c.get("max_abs"))
        out.append(f"- {'✅' if c['passed'] else '❌'} `{c['check']}` `{c['output']}`: observed {obs}"
                   + (f", allowed atol {c['atol']} / rtol {c['rtol']}" if "atol" in c else f", allowed {c.get('allowed')}"))
    out += ["", "## Files", ""] + [f"- `{k}` sha256 `{v}`" for k, v in report["files"].items()]
    return "\n".join(out) + "\n"


def _candidate_row(c: dict, chosen: bool) -> str:
    """One `target = "auto"` candidate: scored, or why it was not."""
    scored = f"{c['agreement']:.4f} | {c['output_error']:.2e}" if c["agreement"] is not None else f"— | {c.get('skipped', '—')}"
    speed = f"{c['speedup_vs_fp32']:.2f}×" if c.get("speedup_vs_fp32") else "—"
    return f"| {c['label']}{' (chosen)' if chosen else ''} | {scored} | {speed} |"
