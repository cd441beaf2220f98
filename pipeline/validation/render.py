"""Human and CI views of a validation result: the summary printed on the terminal and JUnit XML."""

from __future__ import annotations


def _export_line(c: dict) -> str:
    mark = "ok  " if c["passed"] else "FAIL"
    prov = (c.get("backend") or {}).get("providers")
    how = " (decisions replayed)" if c.get("replayed") else ""
    line = f"  {mark} {c['check']:<28} {c['output']:<8}"
    if "max_abs" in c:
        line += (f" max_abs {c['max_abs']:.3g} max_rel {c['max_rel']:.3g}  allowed atol {c['atol']:g} / rtol {c['rtol']:g}"
                 f"{' (' + c['error_stat'] + ')' if c.get('error_stat', 'elemwise') != 'elemwise' else ''}{how}")
    if prov:
        line += f"  providers {','.join(prov)}"
    if not c["passed"]:
        line += f"  — {c.get('reason', 'failed')}"
        if "min_atol_passing" in c and c.get("error_stat", "elemwise") == "elemwise" and "max_abs" in c:
            line += f"; would pass with atol {c['min_atol_passing']:.3g} or rtol {c['min_rtol_passing']:.3g}"
    return line


def summary(result: dict) -> str:
    lines = [f"validation: {'PASSED' if result['passed'] else 'FAILED'}  (inputs: {result['inputs']['source']}, "
             f"shape {result['inputs']['shape']})"]
    if not result["checks"]:
        lines.append("  no checks ran")
    for c in result["checks"]:
        if c["check"].startswith("export:"):
            lines.append(_export_line(c))
        else:
            mark = "ok  " if c["passed"] else "FAIL"
            lines.append(f"  {mark} {c['check']:<28} {c['output']:<8} observed {c['observed']:.4f}  allowed {c['allowed']}")
    f = result.get("fidelity")
    if f and "accuracy_original" in f:
        lines.append(f"  accuracy {f['accuracy_original']:.4f} -> {f['accuracy_compressed']:.4f} on {f['samples']} samples")
    if result.get("note"):
        lines.append(f"  note: {result['note']}")
    return "\n".join(lines)


def junit_xml(result: dict, suite: str = "otcompress.validate") -> str:
    from xml.sax.saxutils import quoteattr

    cases = []
    for c in result["checks"]:
        name = quoteattr(f"{c['check']}[{c['output']}]")
        if c["passed"]:
            cases.append(f"  <testcase classname={quoteattr(suite)} name={name}/>")
        else:
            msg = c.get("reason") or f"observed {c.get('observed')} allowed {c.get('allowed')}"
            body = {k: v for k, v in c.items() if k not in ("backend",)}
            cases.append(f"  <testcase classname={quoteattr(suite)} name={name}>\n"
                         f"    <failure message={quoteattr(str(msg))}>{quoteattr(str(body))[1:-1]}</failure>\n  </testcase>")
    fails = sum(not c["passed"] for c in result["checks"])
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<testsuite name={quoteattr(suite)} tests="{len(cases)}" '
            f'failures="{fails}" errors="0">\n' + "\n".join(cases) + "\n</testsuite>\n")
