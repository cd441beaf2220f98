"""The Task interface, its registry and the generic fallback (what every task file builds on)."""


from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..registry import Registry

TASKS = Registry("task")


@dataclass(frozen=True)
class Bound:
    """A gate check a task asks for: `observed` must be >= `bound` (or <= where not `at_least`)."""

    check: str
    output: str
    observed: float
    bound: float
    at_least: bool = True


class Task:
    name = "task"
    # (metric key, stage-table header) x 3: agreement with the original, largest output error, the score with labels
    columns: tuple[tuple[str, str], ...] = ()
    # gate defaults of its own (e.g. atol_scale for raw dense-prediction tensors whose magnitude reaches hundreds)
    gate_defaults: dict = {}

    def matches(self, model: torch.nn.Module, outputs: dict[str, torch.Tensor], example: torch.Tensor) -> bool:
        raise NotImplementedError

    def fidelity(self, ref: dict[str, np.ndarray], out: dict[str, np.ndarray], labels=None, model=None) -> dict:
        """Metrics of `out` (compressed) against `ref` (original), and against `labels` where given."""
        raise NotImplementedError

    def checks(self, fid: dict, gate) -> list[Bound]:
        """The gate's checks of these metrics, from the gate's thresholds."""
        return []

    def trainable(self) -> str | None:
        """None if the training stages can train it (a labelled loss exists), else why not."""
        return f"{self.name} models have no training loss here (the training stages train classifiers)"


def output_errors(ref: dict[str, np.ndarray], out: dict[str, np.ndarray]) -> dict:
    """Per output: max absolute error and relative L2 error; `max_abs_error` over all outputs."""
    per = {}
    for k, r in ref.items():
        o = out[k].astype(np.float64)
        r = r.astype(np.float64)
        per[k] = {"max_abs_error": float(np.abs(o - r).max(initial=0)),
                  "rel_l2_error": float(np.linalg.norm(o - r) / max(np.linalg.norm(r), 1e-12))}
    return {"outputs": per, "max_abs_error": max((v["max_abs_error"] for v in per.values()), default=0.0),
            "samples": int(len(next(iter(ref.values())))) if ref else 0}


class Generic(Task):
    """Outputs no task claims: raw per-output errors, reported (export correctness still gates them)."""

    name = "generic"
    columns = (("rel_l2_error", "rel L2 err"), ("max_abs_error", "max |Δ|"), ("none", "-"))

    def matches(self, model, outputs, example):
        return True

    def fidelity(self, ref, out, labels=None, model=None):
        e = output_errors(ref, out)
        e["rel_l2_error"] = max((v["rel_l2_error"] for v in e["outputs"].values()), default=0.0)
        return e


GENERIC = Generic()
