"""Human and CI views of a validation result (gate.Validation): the summary printed on the terminal and JUnit XML."""

from __future__ import annotations

from .checks import Check


def _export_line(c: Check) -> str:
    mark = "ok  " if c else "FAIL"
    d = c.details
    prov = (d.get("backend") or {}).get("providers")
    how = " (decisions replayed)" if d.get("replayed") else ""
    line = f"  {mark} {c.check:<28} {c.output:<8}"
    if "max_abs" in d:
        stat = d.get("error_stat", "elemwise")
        line += (f" max_abs {d['max_abs']:.3g} max_rel {d['max_rel']:.3g}  allowed atol {d['atol']:g} / rtol {d['rtol']:g}"
                 f"{' (' + stat + ')' if stat != 'elemwise' else ''}{how}")
    if prov:
        line += f"  providers {','.join(prov)}"
    if not c:
        line += f"  — {c.reason or 'failed'}"
        if "min_atol_passing" in d and d.get("error_stat", "elemwise") == "elemwise" and "max_abs" in d:
            line += f"; would pass with atol {d['min_atol_passing']:.3g} or rtol {d['min_rtol_passing']:.3g}"
    return line


def summary(result) -> str:
    """The terminal view of a Validation."""
    lines = [f"validation: {'PASSED' if result.passed else 'FAILED'}  (inputs: {result.inputs['source']}, "
             f"shape {result.inputs['shape']})"]
    if not result.checks:
        lines.append("  no checks ran")
    for c in result.checks:
        if "max_abs" in c.details or c.check.startswith("export:"):
            lines.append(_export_line(c))
        else:
            mark = "ok  " if c else "FAIL"
            lines.append(f"  {mark} {c.check:<28} {c.output:<8} observed {c.observed:.4f}  allowed {c.allowed}"
                         + (f"  — {c.reason}" if not c and c.reason else ""))
    f = result.fidelity
    if f and "accuracy_original" in f:
        lines.append(f"  accuracy {f['accuracy_original']:.4f} -> {f['accuracy_compressed']:.4f} on {f['samples']} samples")
    if f and "map50_95_original" in f:
        lines.append(f"  mAP50-95 {f['map50_95_original']:.4f} -> {f['map50_95_compressed']:.4f} on {f['samples']} images")
    if f and "miou_original" in f:
        lines.append(f"  mIoU {f['miou_original']:.4f} -> {f['miou_compressed']:.4f} on {f['samples']} images")
    if result.note:
        lines.append(f"  note: {result.note}")
    return "\n".join(lines)


def junit_xml(result, suite: str = "otcompress.validate") -> str:
    """JUnit XML of a Validation: one testcase per check."""
    from xml.sax.saxutils import quoteattr

    cases = []
    for c in result.checks:
        name = quoteattr(f"{c.check}[{c.output}]")
        if c:
            cases.append(f"  <testcase classname={quoteattr(suite)} name={name}/>")
        else:
            msg = c.reason or f"observed {c.observed} allowed {c.allowed}"
            body = {k: v for k, v in c.as_dict().items() if k != "backend"}
            cases.append(f"  <testcase classname={quoteattr(suite)} name={name}>\n"
                         f"    <failure message={quoteattr(str(msg))}>{quoteattr(str(body))[1:-1]}</failure>\n  </testcase>")
    fails = sum(not c for c in result.checks)
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<testsuite name={quoteattr(suite)} tests="{len(cases)}" '
            f'failures="{fails}" errors="0">\n' + "\n".join(cases) + "\n</testsuite>\n")
