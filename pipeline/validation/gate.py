"""The validation gate. Export correctness: every backend against the compressed PyTorch model, every output
element by element. Compression fidelity: the compressed model against the original, judged by what the
outputs mean (otcompress.tasks: top-1 agreement for classifiers, pixel agreement and mIoU for segmenters,
mAP against the original's detections for detectors).

Token-reduced models take discrete merge decisions, and a near-tie decision flips between any two float
computations (PyTorch at batch 1 and at batch 64 disagree as often as PyTorch and onnxruntime), after which
the outputs of that sample legitimately differ. Comparing outputs alone would therefore either fail correct
exports or need tolerances loose enough to pass wrong ones. Where the backend reports the decisions it took
(its taps: onnxruntime does), the gate replays them: the PyTorch model is run with the backend's decisions and
the outputs are compared element by element with the normal tolerances, on every sample. A separate check
requires the backend's decisions to equal PyTorch's own on at least `min_decision_agreement` of the token
decisions (see decision_agreement), so an export whose decision rule itself is wrong (it would pass the
replay) still fails."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..tasks import task_of
from .checks import DEFAULT_TOL, Check, comparison_check, threshold


@dataclass
class Gate:
    """Everything a validation is judged by; the validate stage records it so `otcompress validate` reuses it.
    Each task reads its own thresholds (None: that check is not made)."""

    atol: float = DEFAULT_TOL["fp32"][0]
    rtol: float = DEFAULT_TOL["fp32"][1]
    atol_scale: float = 0.0  # atol at least this times the output's largest magnitude (the task's default)
    float32_floor: bool = True  # where a check fails, atol at least 4x the model's own float32-vs-float64 error
    error_stat: str = "elemwise"
    min_top1_agreement: float = 0.9
    max_accuracy_drop: float | None = None
    min_decision_agreement: float = 0.99
    min_pixel_agreement: float = 0.9
    min_miou_vs_original: float = 0.5
    max_miou_drop: float | None = None
    min_map_vs_original: float = 0.5
    max_map_drop: float | None = None
    min_int8_agreement: float = 0.98  # an INT8 artifact's agreement with the FP32 model it was quantized from
    max_int8_accuracy_drop: float | None = None
    int8_steps: float = 1.0  # an INT8 artifact's integer kernels may differ from its meaning by this mean of output steps

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "Gate":
        """The gate a run recorded (keys this version does not know are ignored)."""
        return cls(**{k: v for k, v in (d or {}).items() if k in cls.__dataclass_fields__})


@dataclass
class Validation:
    """A validation's result: its checks (truthy when every one passed), the fidelity metrics, the inputs."""

    checks: list[Check]
    fidelity: dict | None = None
    inputs: dict = field(default_factory=dict)
    gate: dict = field(default_factory=dict)
    task: str = ""
    note: str | None = None
    seed: int | None = None

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(self.checks)

    def __bool__(self) -> bool:
        return self.passed

    def as_dict(self) -> dict:
        d = {"passed": self.passed, "checks": [c.as_dict() for c in self.checks], "fidelity": self.fidelity,
             "inputs": self.inputs, "gate": self.gate, "task": self.task}
        if self.note:
            d["note"] = self.note
        if self.seed is not None:
            d["seed"] = self.seed
        return d


def decision_agreement(a: dict, b: dict) -> float:
    """Fraction of token decisions (every token's slot) that agree, block by block in the order taken, counted
    on the samples whose earlier blocks agreed: after one near-tie flip a sample's later blocks see other
    tokens, so they measure nothing about the rule. A correct export agrees on nearly every decision; a wrong
    rule on few."""
    if not a:
        return 1.0
    keys = list(a)
    alive = np.ones(len(a[keys[0]]), dtype=bool)
    agree, total = 0.0, 0
    for k in keys:
        eq = a[k] == b[k]  # (samples, tokens)
        if alive.any():
            agree += eq[alive].sum()
            total += eq[alive].size
        alive &= eq.reshape(len(eq), -1).all(1)
    return float(agree / total) if total else 1.0


def _split(outs: dict, taps: list[str]) -> tuple[dict, dict]:
    return {k: v for k, v in outs.items() if k not in taps}, {k: outs[k] for k in taps if k in outs}


FLOOR_FACTOR = 4.0  # an export may differ from PyTorch's float32 by this many times float32's own error


def float32_floor(reference, x: np.ndarray) -> dict[str, float]:
    """Per output, how far the compressed model's own float32 result is from its float64 result on x: the
    finest difference an export of it can be judged by. A well-conditioned model's floor is ~1e-6 of its
    outputs and changes nothing; an ill-conditioned one (random weights through selective-kernel attention)
    reaches 1e-3, where two correct computations differ by more than 1e-4. Computed once per reference and
    only where a check failed; not for token-reduced models (float64 may take other merge decisions)."""
    cached = getattr(reference, "_float32_floor", None)
    if cached is not None and cached[0] is x:
        return cached[1]
    import copy

    import torch

    from ..outputs import flatten

    try:
        m64 = copy.deepcopy(reference.model).double()
        device = next(reference.model.parameters(), torch.zeros(0)).device
        with torch.no_grad():
            xt = torch.from_numpy(x).to(device)
            r32, r64 = flatten(reference.model(xt)), flatten(m64(xt.double()))
        floor = {k: float((r32[k].double() - r64[k]).abs().max()) for k in r32 if k in r64}
    except Exception:  # a model that does not run in float64 (a kernel without a double version): no floor
        floor = {}
    reference._float32_floor = (x, floor)
    return floor


def export_checks(reference, backend, x: np.ndarray, ref_outs: dict, gate: Gate) -> list[Check]:
    """`backend` against `reference` (a TorchRunner) on x: one check per output (decisions replayed where the
    backend reports them) and, for token-reduced models, the decision check."""
    ref_plain, own = _split(ref_outs, reference.tap_names)
    replay = bool(own) and backend.reports_taps and hasattr(reference, "replay")
    outs = backend.infer_batched(x, taps=replay)
    desc = backend.describe()
    name = f"export:{backend.name}"
    got, theirs = _split(outs, list(own) if replay else [])
    missing = [k for k in ref_plain if k not in got]
    if missing:
        return [Check(name, missing[0], False, reason=f"the exported model has no output {missing[0]!r} (it has "
                      f"{sorted(got)[:6]}): exported from another model or version?", details={"backend": desc})]
    if replay:
        lost = sorted(set(own) - set(theirs))
        if lost:
            return [Check(name, ref_plain and next(iter(ref_plain)), False, details={"backend": desc},
                          reason=f"the exported model does not name the decisions {lost[:3]} (exported by another version?)")]
        ref_plain = reference.replay(x, theirs)
    checks = []
    for k, r in ref_plain.items():
        scale = float(np.abs(r).max(initial=0))
        atol = max(gate.atol, gate.atol_scale * scale)  # float32 rounding grows with the magnitude of the terms
        c = comparison_check(name, k, r, got[k], atol, gate.rtol, gate.error_stat, backend=desc, replayed=replay,
                             output_scale=scale)
        if not c and gate.float32_floor and not own and np.isfinite(got[k]).all():  # the model's own rounding
            floor = FLOOR_FACTOR * float32_floor(reference, x).get(k, 0.0)
            if floor > atol:
                c = comparison_check(name, k, r, got[k], floor, gate.rtol, gate.error_stat, backend=desc,
                                     replayed=replay, output_scale=scale, float32_floor=floor / FLOOR_FACTOR)
        checks.append(c)
    if replay:
        agree = decision_agreement(own, theirs)
        checks.append(Check(f"decisions:{backend.name}", "tokens", agree >= gate.min_decision_agreement, observed=agree,
                            allowed=f">= {gate.min_decision_agreement}", details={"blocks": len(own)}))
    return checks


def validate(reference, backends: list, x: np.ndarray, gate: Gate, *, original=None, labels=None,
             input_source: str = "", quantized: dict | None = None) -> Validation:
    """Export correctness of every backend against `reference`, and fidelity of `reference` against `original`.

    Args:
        reference: a TorchRunner of the compressed model.
        backends: Runners of the exported files (each activated and deactivated here).
        x: the inputs.
        gate: the thresholds.
        original: a TorchRunner of the original model (None: fidelity is not checked).
        labels: class labels (N,) or a dict of targets (detection boxes/classes, segmentation masks).
        quantized: {backend name: (FP32 ONNX path, plan)} for quantized artifacts, judged by validation.quantized
            (their plan, their fake-quantized reference, their agreement with the FP32 model) instead.
    """
    from .quantized import int8_fidelity, quantized_checks

    ref_outs = reference.infer_batched(x, taps=True)
    plain, _ = _split(ref_outs, reference.tap_names)
    orig = original.infer_batched(x) if original is not None else None
    checks: list[Check] = []
    for b in backends:
        with b:
            if quantized and b.name in quantized:
                fp32_path, plan = quantized[b.name]
                checks += quantized_checks(b.name, b, fp32_path, plan, x, gate)
                checks += int8_fidelity(b.name, reference.model, x, plain, b.infer_batched(x), gate, orig, labels)
            else:
                checks += export_checks(reference, b, x, ref_outs, gate)
    import torch

    task = task_of(reference.model, {k: torch.from_numpy(v[:1]) for k, v in plain.items()}, torch.from_numpy(x[:1]))
    fid = None
    if orig is not None:
        fid = task.fidelity(orig, plain, labels, model=reference.model)
        checks += [threshold(b.check, b.output, b.observed, b.bound, b.at_least) for b in task.checks(fid, gate)]
    return Validation(checks, fid, {"source": input_source, "shape": list(x.shape)}, gate.as_dict(), task.name)
