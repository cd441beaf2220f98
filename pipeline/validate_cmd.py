"""`otcompress validate TARGET`: rebuild the reference (and, where its checkpoint is still there, the
original) from compressed.safetensors and check every exported file against them."""

from __future__ import annotations

from pathlib import Path


from .errors import OTCError
from .validation import DEFAULT_TOL, inputs, validate


def _targets(target: Path) -> tuple[list[Path], Path | None]:
    if target.is_dir():
        files = [p for p in (target / "model.onnx", target / "model.plan") if p.exists()]
        if not files:
            raise OTCError(f"{target}: no model.onnx or model.plan in this folder")
        ref = target / "compressed.safetensors"
        return files, ref if ref.exists() else None
    if not target.exists():
        raise OTCError(f"{target}: file not found")
    if target.suffix not in (".onnx", ".plan", ".engine"):
        raise OTCError(f"{target}: expected an artifact folder, a .onnx file or a .plan file")
    ref = target.parent / "compressed.safetensors"
    return [target], ref if ref.exists() else None


def _runner(path: Path):
    if path.suffix == ".onnx":
        from otcompress.exporters.runners import OrtRunner

        return OrtRunner(path)
    from otcompress.exporters.tensorrt import TrtRunner

    return TrtRunner(path)


def validate_target(target: Path, *, reference=None, original=None, data=None, samples=64, seed=0, atol=None, rtol=None,
                    error_stat=None, min_agreement=None, max_accuracy_drop=None) -> dict:
    from otcompress.exporters.runners import TorchRunner

    from .checkpoint import load_weights, read_state_dict
    from .serialize import load_compressed
    from .zoo import build_model

    files, found_ref = _targets(target)
    reference = reference or found_ref
    if reference is None:
        raise OTCError(f"{target}: no compressed.safetensors beside it; pass --reference")
    model, meta = load_compressed(reference)
    backends = [_runner(f) for f in files]
    shape = meta["input_shape"]
    for b in backends:
        fixed = [d for d in b.input_shape[1:]]
        if all(isinstance(d, int) for d in fixed) and fixed != list(shape[1:]):
            raise OTCError(f"{b.path}: input shape {b.input_shape} does not match the reference model's {shape}")
    data = data or (Path(meta["eval"]) if meta.get("eval") and Path(meta["eval"]).exists() else None)
    x, y, source = inputs(data, meta.get("mean"), meta.get("std"), samples, seed, shape)
    orig_runner = None
    ckpt = original or (meta.get("original") or {}).get("checkpoint")
    if ckpt and Path(ckpt).exists():
        om = build_model(meta["arch"], meta.get("args"))
        load_weights(om, read_state_dict(ckpt), str(ckpt))
        orig_runner = TorchRunner(om, "pytorch:original", input_shape=shape)
    elif original:
        raise OTCError(f"{original}: file not found")
    recorded = meta.get("validate", {})
    prec = meta.get("tensorrt_precision", "fp32") if any(f.suffix != ".onnx" for f in files) else "fp32"
    res = validate(TorchRunner(model, "pytorch:compressed", input_shape=shape), backends, x, original=orig_runner, labels=y,
                   atol=atol if atol is not None else recorded.get("atol", DEFAULT_TOL[prec][0]),
                   rtol=rtol if rtol is not None else recorded.get("rtol", DEFAULT_TOL[prec][1]),
                   error_stat=error_stat or recorded.get("error_stat", "elemwise"),
                   min_top1_agreement=min_agreement if min_agreement is not None else recorded.get("min_top1_agreement", 0.9),
                   max_accuracy_drop=max_accuracy_drop if max_accuracy_drop is not None else recorded.get("max_accuracy_drop"),
                   input_source=source)
    res["seed"] = seed
    if orig_runner is None:
        res["note"] = "original model not available (no checkpoint recorded or file moved): fidelity not checked"
    return res
