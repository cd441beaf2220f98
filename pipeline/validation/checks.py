"""The comparison of two outputs: Polygraphy's rule (an element fails only where it exceeds both atol and
rtol; NaN/Inf always fail), or an error statistic gated instead (Polygraphy's --check-error-stat)."""

from __future__ import annotations

import numpy as np


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
        return {"passed": False, "atol": atol, "rtol": rtol, "error_stat": error_stat,
                "reason": f"shape {list(out.shape)} differs from the reference's {list(ref.shape)}"}
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
