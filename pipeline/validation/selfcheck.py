"""Before a run reports success: reload compressed.safetensors and every exported file and compare them with
the in-memory model on a few probe inputs (exports through the gate's export check, decisions replayed).
Any difference is a bug of ours (an internal error naming the file), never the user's."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..errors import InternalError, OTCError
from ..outputs import flatten
from .gate import Gate, export_checks
from .quantized import quantized_checks, quantized_reference


def self_check(model: torch.nn.Module, path: Path, exports: dict, x: np.ndarray, input_shape,
               fresh: torch.nn.Module | None = None, gate: Gate | None = None, failed: frozenset = frozenset()) -> dict:
    """Args: the compressed model in memory, its compressed.safetensors, {artifact name: Export}, probe inputs,
    a fresh original where the run recorded no model source, and the gate whose tolerances the numbers are
    checked with (default: the fp32 defaults), and the backends the validation already failed (their files
    differ from the model by the user's tolerance, a reported failure rather than our bug: not checked again).
    Quantized files are checked against their plan.

    Returns {reload_max_abs, exports: {backend: max_abs}}. Raises InternalError on any mismatch."""
    from otcompress.exporters import BACKENDS
    from otcompress.exporters.pytorch import TorchRunner

    from ..serialize import load_compressed

    try:
        again, _ = load_compressed(path, fresh)
    except OTCError as e:
        raise InternalError(f"self-check: {path.name} does not reload: {e}") from None
    with torch.no_grad():
        want = flatten(model(torch.from_numpy(x)))
        got = flatten(again(torch.from_numpy(x)))
    err = max(float((want[k] - got[k]).abs().max()) for k in want)
    if list(want) != list(got) or not all(torch.allclose(want[k], got[k], atol=1e-5, rtol=1e-5) for k in want):
        raise InternalError(f"self-check: the model rebuilt from {path.name} differs from the compressed model "
                            f"(max |Δ| {err:.3g})")
    result = {"reload_max_abs": err, "exports": {}}
    ref = TorchRunner(again, "pytorch:reloaded", input_shape=input_shape)
    ref_outs = ref.infer_batched(x, taps=True)
    for name, b in BACKENDS.items():
        e = exports.get(b.artifact)
        if e is None:
            continue
        if name in failed:
            result["exports"][name] = "not checked: the validation failed it"
            continue
        g = replace(gate or Gate(), min_decision_agreement=0.0)  # decisions are the validate stage's; here, numbers
        with b.open(e.path) as runner:
            if e.gate and e.gate.get("kind") == "int8":  # the INT8 file holds its plan and matches its reference
                fp32, plan = quantized_reference(path.parent, e.gate)
                checks = quantized_checks(name, runner, fp32, plan, x, g)
            else:
                checks = export_checks(ref, runner, x, ref_outs, g)
        bad = [c for c in checks if not c]
        if bad:
            raise InternalError(f"self-check: {e.path.name} does not reproduce the compressed model: {bad[0].reason}")
        result["exports"][name] = max(c.details.get("max_abs", 0.0) for c in checks)
    return result
