"""How two outputs are compared, the default tolerances (defined here once), and the typed results the gate,
the report and the CLI read: Polygraphy's rule (an element fails only where it exceeds both atol and rtol;
NaN/Inf always fail), or an error statistic gated instead (Polygraphy's --check-error-stat)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DEFAULT_TOL = {"fp32": (1e-4, 1e-3), "fp16": (1e-2, 1e-2)}  # (atol, rtol) by the precision an engine was built in

_STATS = {"max": np.max, "mean": np.mean, "median": np.median}
ERROR_STATS = ("elemwise", *_STATS)


def tolerances(precision: str) -> tuple[float, float]:
    """The default (atol, rtol) for an artifact built in `precision` ("fp32" for anything not listed)."""
    return DEFAULT_TOL.get(precision, DEFAULT_TOL["fp32"])


@dataclass
class Check:
    """One check of a validation: its name ("export:onnxruntime", "fidelity:top1_agreement"), the output it
    looked at, whether it passed, what was observed and allowed, why it failed, and the statistics behind it.
    Truthy when it passed."""

    check: str
    output: str
    passed: bool
    observed: float | None = None
    allowed: str | None = None
    reason: str | None = None
    details: dict = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.passed)

    def as_dict(self) -> dict:
        d = {"check": self.check, "output": self.output, "passed": bool(self.passed)}
        for k in ("observed", "allowed", "reason"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        return {**d, **self.details}


def threshold(check: str, output: str, observed: float, bound: float, at_least: bool = True) -> Check:
    """A fidelity check against one bound (observed >= bound, or <= bound)."""
    ok = observed >= bound if at_least else observed <= bound
    return Check(check, output, bool(ok), observed=float(observed), allowed=f"{'>=' if at_least else '<='} {bound}")


def compare(ref: np.ndarray, out: np.ndarray, atol: float, rtol: float, error_stat: str = "elemwise") -> dict:
    """Polygraphy's rule. elemwise: no element may exceed both atol and rtol. max/mean/median: that
    statistic of the absolute error must be <= atol, or of the relative error <= rtol (median suits
    token-merging models, whose rare near-tie merges flip between any two float computations).

    Returns the statistics (max/mean/p99 absolute and relative error, failing elements, the smallest atol or
    rtol that would pass), `passed` and, where it failed, `reason`."""
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


def comparison_check(name: str, output: str, ref: np.ndarray, out: np.ndarray, atol: float, rtol: float,
                     error_stat: str, **details) -> Check:
    """`compare` as a Check."""
    res = compare(ref, out, atol, rtol, error_stat)
    passed, reason = res.pop("passed"), res.pop("reason", None)
    return Check(name, output, passed, reason=reason, details={**details, **res})
