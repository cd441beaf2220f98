"""Validation that gates CI. Export correctness: every backend against the compressed PyTorch model,
element failing only where it exceeds both atol and rtol (Polygraphy's rule), NaN/Inf always failing.
Compression fidelity: the compressed model against the original (top-1 agreement, logit distance,
accuracy before/after)."""

from __future__ import annotations

import numpy as np

from .errors import OTCError

DEFAULT_TOL = {"fp32": (1e-4, 1e-3), "fp16": (1e-2, 1e-2)}


_STATS = {"max": np.max, "mean": np.mean, "median": np.median}
ERROR_STATS = ("elemwise", *_STATS)


def compare(ref: np.ndarray, out: np.ndarray, atol: float, rtol: float, error_stat: str = "elemwise") -> dict:
    """Polygraphy's rule. elemwise: no element may exceed both atol and rtol. max/mean/median: that
    statistic of the absolute error must be <= atol, or of the relative error <= rtol (median suits
    token-merging models, whose rare near-tie merges flip between any two float computations)."""
    ref = ref.astype(np.float64)
    out = out.astype(np.float64)
    if ref.shape != out.shape:
        return {"passed": False, "reason": f"shape {list(out.shape)} differs from reference {list(ref.shape)}"}
    finite = np.isfinite(out).all()
    diff = np.abs(out - ref)
    rel = diff / np.maximum(np.abs(ref), 1e-12)
    bad = (diff > atol) & (rel > rtol)
    q = lambda a, p: float(np.quantile(a, p)) if a.size else 0.0  # noqa: E731
    res = {
        "max_abs": float(diff.max(initial=0)), "mean_abs": float(diff.mean()) if diff.size else 0.0, "p99_abs": q(diff, 0.99),
        "max_rel": float(rel.max(initial=0)), "mean_rel": float(rel.mean()) if rel.size else 0.0, "p99_rel": q(rel, 0.99),
        "failing_elements": int(bad.sum()), "elements": int(diff.size), "atol": atol, "rtol": rtol,
        # the smallest tolerance that would have passed with the other one held fixed
        "min_atol_passing": float(diff[rel > rtol].max(initial=0)),
        "min_rtol_passing": float(rel[diff > atol].max(initial=0)),
        "nonfinite": int((~np.isfinite(out)).sum()),
    }
    res["error_stat"] = error_stat
    if error_stat == "elemwise":
        res["passed"] = bool(finite and not bad.any())
    else:
        f = _STATS[error_stat]
        res[f"{error_stat}_abs"], res[f"{error_stat}_rel"] = (float(f(diff)), float(f(rel))) if diff.size else (0.0, 0.0)
        res["passed"] = bool(finite and (res[f"{error_stat}_abs"] <= atol or res[f"{error_stat}_rel"] <= rtol))
    if not finite:
        res["reason"] = f"{res['nonfinite']} NaN/Inf values"
    elif not res["passed"] and error_stat == "elemwise":
        res["reason"] = f"{res['failing_elements']} of {res['elements']} elements exceed both atol and rtol"
    elif not res["passed"]:
        res["reason"] = (f"{error_stat} abs error {res[f'{error_stat}_abs']:.3g} > atol and {error_stat} rel error "
                         f"{res[f'{error_stat}_rel']:.3g} > rtol")
    return res


def inputs(data, mean, std, samples: int, seed: int, input_shape) -> tuple[np.ndarray, np.ndarray | None, str]:
    """The first `samples` of an eval set (normalised), or seeded standard-normal inputs when there is none."""
    if data is not None:
        from .data import load_dataset

        ds = load_dataset(data, samples)
        x = ds.batch(slice(None), mean, std).numpy().astype(np.float32)
        if list(x.shape[1:]) != list(input_shape[1:]):
            raise OTCError(f"{data}: samples have shape {list(x.shape[1:])}; the model expects {list(input_shape[1:])}")
        return x, (ds.y.numpy() if ds.y is not None else None), f"{data} (first {len(x)})"
    x = np.random.default_rng(seed).standard_normal((samples, *input_shape[1:])).astype(np.float32)
    return x, None, f"seeded standard normal (seed {seed})"


def fidelity(orig: np.ndarray, new: np.ndarray, labels: np.ndarray | None) -> dict:
    import torch

    from .metrics import fidelity as logit_fidelity

    f = logit_fidelity(torch.from_numpy(orig), torch.from_numpy(new))
    res = {"top1_agreement": f["top1_agreement"], "mean_logit_l2": f["mean_logit_l2"], "samples": int(len(orig))}
    if labels is not None:
        res["accuracy_original"] = float((orig.argmax(-1) == labels).mean())
        res["accuracy_compressed"] = float((new.argmax(-1) == labels).mean())
        res["accuracy_drop"] = res["accuracy_original"] - res["accuracy_compressed"]
    return res


def validate(reference, backends: list, x: np.ndarray, *, original=None, labels=None, atol: float, rtol: float,
             error_stat: str = "elemwise", min_top1_agreement: float = 0.9, max_accuracy_drop: float | None = None, input_source: str = "") -> dict:
    """reference/backends/original are Runners. Returns {passed, checks: [...], ...}."""
    ref = reference.run_batched(x)
    checks = []
    for b in backends:
        outs = b.run_batched(x)
        for name, r in ref.items():
            key = name if name in outs else next(iter(outs))
            c = compare(r, outs[key], atol, rtol, error_stat)
            checks.append({"check": f"export:{b.name}", "output": name, "backend": b.describe(), **c})
    fid = None
    if original is not None:
        orig = original.run_batched(x)
        name = next(iter(ref))
        fid = fidelity(orig[name], ref[name], labels)
        agree = {"check": "fidelity:top1_agreement", "output": name, "observed": fid["top1_agreement"],
                 "allowed": f">= {min_top1_agreement}", "passed": fid["top1_agreement"] >= min_top1_agreement}
        checks.append(agree)
        if max_accuracy_drop is not None and labels is not None:
            checks.append({"check": "fidelity:accuracy_drop", "output": name, "observed": fid["accuracy_drop"],
                           "allowed": f"<= {max_accuracy_drop}", "passed": fid["accuracy_drop"] <= max_accuracy_drop})
    return {"passed": all(c["passed"] for c in checks), "checks": checks, "fidelity": fid,
            "inputs": {"source": input_source, "shape": list(x.shape)}}


def summary(result: dict) -> str:
    lines = [f"validation: {'PASSED' if result['passed'] else 'FAILED'}  (inputs: {result['inputs']['source']}, "
             f"shape {result['inputs']['shape']})"]
    for c in result["checks"]:
        mark = "ok  " if c["passed"] else "FAIL"
        if c["check"].startswith("export:"):
            prov = c["backend"].get("providers")
            lines.append(f"  {mark} {c['check']:<28} {c['output']:<8} max_abs {c.get('max_abs', float('nan')):.3g} "
                         f"max_rel {c.get('max_rel', float('nan')):.3g}  allowed atol {c['atol']:g} / rtol {c['rtol']:g}"
                         + (f"  providers {','.join(prov)}" if prov else "")
                         + (f"  — {c['reason']}; would pass with atol {c['min_atol_passing']:.3g} or rtol {c['min_rtol_passing']:.3g}"
                            if not c["passed"] and "min_atol_passing" in c else (f"  — {c['reason']}" if not c["passed"] else "")))
        else:
            lines.append(f"  {mark} {c['check']:<28} {c['output']:<8} observed {c['observed']:.4f}  allowed {c['allowed']}")
    f = result.get("fidelity")
    if f and "accuracy_original" in f:
        lines.append(f"  accuracy {f['accuracy_original']:.4f} -> {f['accuracy_compressed']:.4f} on {f['samples']} samples")
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
