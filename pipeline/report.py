"""Human-readable views of report.json: the stage table printed at the end and report.md."""

from __future__ import annotations


def _fmt_int(n: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def stage_rows(report: dict) -> list[list[str]]:
    base = report["stages"][0]
    rows = []
    for r in report["stages"]:
        acc = f"{r['accuracy']:.4f}" if "accuracy" in r else "-"
        rows.append([r["kind"], _fmt_int(r["params"]), f"{r['params'] / base['params']:.3f}", _fmt_int(r["flops"]),
                     f"{r['flops'] / base['flops']:.3f}", f"{r['top1_agreement']:.4f}", f"{r['max_abs_error']:.2e}", acc,
                     f"{r['seconds']:.1f}"])
    return rows


HEAD = ["stage", "params", "×orig", "FLOPs", "×orig", "top1 agree", "max |Δlogit|", "accuracy", "s"]


def stage_table(report: dict) -> str:
    rows = [HEAD] + stage_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEAD))]
    line = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    verdict = "validation: " + verdict_word(report["validation"])
    return "\n".join([line(rows[0]), line(["-" * w for w in widths])] + [line(r) for r in rows[1:]] + [verdict])


def verdict_word(v: dict) -> str:
    """PASSED / FAILED, or NOT RUN: a run without a validate stage validated nothing and must not say passed."""
    if v.get("passed") is None:
        return "NOT RUN" + (f" ({v['note']})" if v.get("note") else "")
    return "PASSED" if v["passed"] else "FAILED"


def render_markdown(report: dict) -> str:
    out = [f"# {report['name']}", "", f"Recipe `{report['recipe']}` (sha256 `{report['recipe_sha256'][:12]}…`); "
           f"fidelity measured on {report['probe']}.", "", "| " + " | ".join(HEAD) + " |",
           "|" + "---|" * len(HEAD)]
    out += ["| " + " | ".join(r) + " |" for r in stage_rows(report)]
    for r in report["stages"]:
        groups = (r.get("details") or {}).get("groups")
        if groups:
            out += ["", f"## {r['kind']}: channel groups", "", "| group | before | after | fused | layers |", "|---|---|---|---|---|"]
            out += [f"| {g['group']} | {g['before']} | {g['after']} | {'yes' if g['fused'] else 'no'} | {len(g['layers'])} |"
                    for g in groups]
    v = report["validation"]
    out += ["", "## Validation", "", f"**{verdict_word(v)}**", ""]
    for c in v.get("checks", []):
        obs = c.get("observed", c.get("max_abs"))
        out.append(f"- {'✅' if c['passed'] else '❌'} `{c['check']}` `{c['output']}`: observed {obs}"
                   + (f", allowed atol {c['atol']} / rtol {c['rtol']}" if "atol" in c else f", allowed {c.get('allowed')}"))
    out += ["", "## Files", ""] + [f"- `{k}` sha256 `{v}`" for k, v in report["files"].items()]
    return "\n".join(out) + "\n"
