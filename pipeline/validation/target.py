"""`otcompress validate TARGET`: rebuild the reference (and, where it can still be found, the original) from
compressed.safetensors and check every exported file against them with the gate the run recorded
(command-line options override it)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..errors import OTCError
from .checks import tolerances
from .gate import Gate, Validation, validate
from .inputs import probe_inputs


def _targets(target: Path) -> tuple[list, Path | None]:
    """(backend, file) pairs to check and the compressed.safetensors beside them."""
    from otcompress.exporters import BACKENDS, backends_for

    if target.is_dir():
        files = [(b, target / b.artifact) for _, b in BACKENDS.items() if (target / b.artifact).exists()]
        if not files:
            raise OTCError(f"{target}: no exported model in this folder (expected one of "
                           f"{', '.join(b.artifact for _, b in BACKENDS.items())})")
        ref = target / "compressed.safetensors"
        return files, ref if ref.exists() else None
    if not target.exists():
        raise OTCError(f"{target}: file not found")
    files = [(b, target) for b in backends_for(target)]
    if not files:
        raise OTCError(f"{target}: expected an artifact folder or an exported model "
                       f"({', '.join(s for _, b in BACKENDS.items() for s in b.suffixes)})")
    ref = target.parent / "compressed.safetensors"
    return files, ref if ref.exists() else None


def validate_target(target: Path, *, reference=None, original=None, data=None, samples=64, seed=0, atol=None, rtol=None,
                    error_stat=None, min_agreement=None, max_accuracy_drop=None, min_decision_agreement=None) -> Validation:
    """Check every exported file of `target` (a folder, or one file) against the compressed model rebuilt from
    compressed.safetensors, and that model against the original where it can still be found.

    Args: the reference and original checkpoints (default: found beside the target / as recorded), the data
    (default: the run's eval set, else seeded normal samples), and any gate setting to override.

    Raises:
        OTCError: no exported file or reference, shapes that do not match, files that cannot be read.
    """
    from otcompress.exporters.pytorch import TorchRunner

    from ..models import original_model
    from ..serialize import load_compressed

    files, found_ref = _targets(target)
    reference = reference or found_ref
    if reference is None:
        raise OTCError(f"{target}: no compressed.safetensors beside it; pass --reference")
    model, meta = load_compressed(reference)
    backends = [b.open(f) for b, f in files]
    shape = meta["input_shape"]
    for b in backends:
        fixed = list(b.input_shape[1:])
        if all(isinstance(d, int) for d in fixed) and fixed != list(shape[1:]):
            raise OTCError(f"{b.path}: input shape {b.input_shape} does not match the reference model's {shape}")
    if data is None and meta.get("eval") and Path(meta["eval"]).exists():
        data = Path(meta["eval"])
    probe = probe_inputs(data, meta.get("mean"), meta.get("std"), samples, seed, shape)
    orig = original_model(meta, original)
    recorded = meta.get("gate")
    gate = Gate.from_dict(recorded)
    built = {(meta.get("exports") or {}).get(f.name, {}).get("precision", "fp32") for _, f in files}
    if not recorded and "fp16" in built:  # the defaults of what was built (the validate stage records its own)
        gate = replace(gate, **dict(zip(("atol", "rtol"), tolerances("fp16"))))
    given = dict(atol=atol, rtol=rtol, error_stat=error_stat, min_top1_agreement=min_agreement,
                 max_accuracy_drop=max_accuracy_drop, min_decision_agreement=min_decision_agreement)
    gate = replace(gate, **{k: v for k, v in given.items() if v is not None})
    quantized = {}
    for (b, f), runner in zip(files, backends):
        rec = (meta.get("exports") or {}).get(f.name, {}).get("gate")
        if rec and rec.get("kind") == "int8":
            from .quantized import quantized_reference

            quantized[runner.name] = quantized_reference(f.parent, rec)
    res = validate(TorchRunner(model, "pytorch:compressed", input_shape=shape), backends, probe.x, gate,
                   original=TorchRunner(orig, "pytorch:original", input_shape=shape) if orig is not None else None,
                   labels=probe.labels, input_source=probe.source, quantized=quantized)
    res.seed = seed
    if orig is None:
        res.note = "original model not available (no checkpoint recorded, or the file moved): fidelity not checked"
    return res
