"""The validation gate. Export correctness: every backend against the compressed PyTorch model. Compression
fidelity: the compressed model against the original (top-1 agreement, accuracy drop).

Token-reduced models take discrete merge decisions, and a near-tie decision flips between any two float
computations (PyTorch at batch 1 and at batch 64 disagree as often as PyTorch and onnxruntime), after which
the logits of that sample legitimately differ. Comparing logits alone would therefore either fail correct
exports or need tolerances loose enough to pass wrong ones. Where the backend reports the decisions it took
(onnxruntime does), the gate replays them: the PyTorch model is run with the backend's decisions and the
logits are compared element by element with the normal tolerances, on every sample. A separate check
requires the backend's decisions to equal PyTorch's own on at least `min_decision_agreement` of the token
decisions (see decision_agreement), so an export whose decision rule itself is wrong (it would pass the
replay) still fails."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .checks import DEFAULT_TOL, compare
from ..metrics import fidelity

DEST = "tokens.dest."


@dataclass
class Gate:
    """Everything a validation is judged by; the validate stage records it so `otcompress validate` reuses it."""

    atol: float = DEFAULT_TOL["fp32"][0]
    rtol: float = DEFAULT_TOL["fp32"][1]
    error_stat: str = "elemwise"
    min_top1_agreement: float = 0.9
    max_accuracy_drop: float | None = None
    min_decision_agreement: float = 0.99

    def as_dict(self) -> dict:
        return asdict(self)


def _decisions(outs: dict) -> dict:
    return {k: v for k, v in outs.items() if k.startswith(DEST)}


def decision_agreement(a: dict, b: dict) -> float:
    """Fraction of token decisions (every token's slot) that agree, block by block, counted on the samples
    whose earlier blocks agreed: after one near-tie flip a sample's later blocks see other tokens, so they
    measure nothing about the rule. A correct export agrees on nearly every decision; a wrong rule on few."""
    if not a:
        return 1.0
    keys = sorted(a, key=lambda k: int(k.rsplit(".", 1)[1]))
    alive = np.ones(len(a[keys[0]]), dtype=bool)
    agree, total = 0.0, 0
    for k in keys:
        eq = a[k] == b[k]  # (samples, tokens)
        if alive.any():
            agree += eq[alive].sum()
            total += eq[alive].size
        alive &= eq.all(1)
    return float(agree / total) if total else 1.0


def export_checks(reference, backend, x: np.ndarray, ref_outs: dict, gate: Gate) -> list[dict]:
    own = _decisions(ref_outs)
    replay = bool(own) and backend.reports_decisions and hasattr(reference, "replay")
    outs = backend.infer_batched(x, decisions=replay)
    desc = backend.describe()
    if not replay:
        ref = ref_outs["logits"]
        c = compare(ref, outs["logits"] if "logits" in outs else next(iter(outs.values())), gate.atol, gate.rtol, gate.error_stat)
        return [{"check": f"export:{backend.name}", "output": "logits", "backend": desc, "replayed": False, **c}]
    theirs = _decisions(outs)
    missing = sorted(set(own) - set(theirs))
    if missing:
        return [{"check": f"export:{backend.name}", "output": "logits", "backend": desc, "passed": False,
                 "reason": f"the exported model does not name the decisions {missing[:3]} (exported by another version?)"}]
    replayed = reference.replay(x, theirs)
    c = compare(replayed, outs["logits"], gate.atol, gate.rtol, gate.error_stat)
    agree = decision_agreement(own, theirs)
    return [
        {"check": f"export:{backend.name}", "output": "logits", "backend": desc, "replayed": True, **c},
        {"check": f"decisions:{backend.name}", "output": "tokens", "observed": agree,
         "allowed": f">= {gate.min_decision_agreement}", "passed": agree >= gate.min_decision_agreement,
         "blocks": len(own)},
    ]


def validate(reference, backends: list, x: np.ndarray, gate: Gate, *, original=None, labels=None,
             input_source: str = "") -> dict:
    """reference/backends/original are Runners. Returns {passed, checks: [...], fidelity, inputs, gate}."""
    ref_outs = reference.infer_batched(x, decisions=True) if getattr(reference, "reports_decisions", False) else reference.infer_batched(x)
    checks = []
    for b in backends:
        with b:
            checks += export_checks(reference, b, x, ref_outs, gate)
    fid = None
    if original is not None:
        orig = original.infer_batched(x)["logits"]
        fid = fidelity(orig, ref_outs["logits"], labels)
        checks.append({"check": "fidelity:top1_agreement", "output": "logits", "observed": fid["top1_agreement"],
                       "allowed": f">= {gate.min_top1_agreement}", "passed": fid["top1_agreement"] >= gate.min_top1_agreement})
        if gate.max_accuracy_drop is not None and labels is not None:
            checks.append({"check": "fidelity:accuracy_drop", "output": "logits", "observed": fid["accuracy_drop"],
                           "allowed": f"<= {gate.max_accuracy_drop}", "passed": fid["accuracy_drop"] <= gate.max_accuracy_drop})
    return {"passed": bool(checks) and all(c["passed"] for c in checks), "checks": checks, "fidelity": fid,
            "inputs": {"source": input_source, "shape": list(x.shape)}, "gate": gate.as_dict()}
