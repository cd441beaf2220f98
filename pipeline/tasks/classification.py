"""Classifiers: one [batch, classes] logits output. Fidelity: top-1 agreement with the original, logit
errors and, with labels, both accuracies."""

from __future__ import annotations

import numpy as np

from .base import TASKS, Bound, Task


def fidelity(ref, out, labels=None) -> dict:
    """Compressed logits `out` against the original's `ref` (tensors or arrays): errors, top-1 agreement
    and, with labels, both accuracies."""
    ref = np.asarray(ref.detach().cpu() if hasattr(ref, "detach") else ref, dtype=np.float64)
    out = np.asarray(out.detach().cpu() if hasattr(out, "detach") else out, dtype=np.float64)
    diff = np.abs(out - ref)
    res = {
        "max_abs_error": float(diff.max(initial=0)),
        "mean_abs_error": float(diff.mean()) if diff.size else 0.0,
        "rel_error": float(diff.max(initial=0) / max(np.abs(ref).max(initial=0), 1e-12)),
        "mean_logit_l2": float(np.linalg.norm(out - ref, axis=-1).mean()) if diff.size else 0.0,
        "top1_agreement": float((out.argmax(-1) == ref.argmax(-1)).mean()) if diff.size else 1.0,
        "samples": int(len(ref)),
    }
    if labels is not None:
        labels = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels)
        res["accuracy_original"] = float((ref.argmax(-1) == labels).mean())
        res["accuracy"] = res["accuracy_compressed"] = float((out.argmax(-1) == labels).mean())
        res["accuracy_drop"] = res["accuracy_original"] - res["accuracy_compressed"]
    return res


class Classification(Task):
    name = "classification"
    columns = (("top1_agreement", "top1 agree"), ("max_abs_error", "max |Δlogit|"), ("accuracy", "accuracy"))

    def matches(self, model, outputs, example):
        return len(outputs) == 1 and next(iter(outputs.values())).dim() == 2

    def fidelity(self, ref, out, labels=None, model=None):
        (k,) = ref
        res = fidelity(ref[k], out[k], labels if labels is None or np.ndim(labels) == 1 else None)
        return {**res, "output": k}

    def checks(self, fid, gate):
        key = fid.get("output", "logits")
        out = [Bound("fidelity:top1_agreement", key, fid["top1_agreement"], gate.min_top1_agreement)]
        if gate.max_accuracy_drop is not None and "accuracy_drop" in fid:
            out.append(Bound("fidelity:accuracy_drop", key, fid["accuracy_drop"], gate.max_accuracy_drop, False))
        return out

    def trainable(self):
        return None


TASKS.register("classification", Classification())
