"""One quantization: onnxruntime's quantize_static (Q/DQ format) of the FP32 model with given settings, the
calibration ranges of the settings' method computed once per method and cached beside the work, and the nodes
kept in float: op types that lose most in 8 bits, and named exclusions (a model family's, the recipe's, the
fallback's)."""

from __future__ import annotations

import contextlib
import fnmatch
import io
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ..errors import OTCError
from .bias import correct_bias
from .settings import CALIBRATIONS, KEEP_FLOAT, SCHEMES, Settings

# what onnxruntime is asked to quantize: weighted ops and the ops TensorRT fuses Q/DQ into (residual adds,
# concatenations, pooling, resizing), so the placement is one TensorRT accepts; activations between them follow.
# Relu and Clip (ReLU6) are listed so that, with asymmetric (u8) activations, onnxruntime folds them into the
# range of the Q that follows them (a u8 grid starting at 0 is the ReLU) instead of leaving DQ -> Relu -> Q in
# float between integer ops: on the INT8 benchmark's ResNet-56 that is 87 Q nodes instead of 141 and 2.0x FP32
# speed instead of 1.5x. With symmetric (s8) activations they stay, quantized on both sides.
OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Concat", "MaxPool", "AveragePool", "GlobalAveragePool",
            "Resize", "Relu", "Clip")


@dataclass
class Quantized:
    path: Path
    settings: Settings
    float_nodes: dict[str, str] = field(default_factory=dict)  # node -> why it stayed in float
    seconds: float = 0.0
    bias_shift: dict[str, list[float]] = field(default_factory=dict)  # bias tensor -> shift per channel (bias.py)


class _Reader:
    """Calibration images one model batch at a time (onnxruntime's CalibrationDataReader protocol)."""

    def __init__(self, x: np.ndarray, name: str, batch: int):
        self.items = [{name: np.ascontiguousarray(x[i:i + batch])} for i in range(0, len(x) - batch + 1, batch)]
        self.i = 0

    def get_next(self):
        if self.i >= len(self.items):
            return None
        self.i += 1
        return self.items[self.i - 1]

    def __len__(self):
        return len(self.items)


def module_of(node: onnx.NodeProto) -> str:
    """The PyTorch module a node of our ONNX export came from ("" where not recorded)."""
    scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
    if not scopes:
        return ""
    try:
        names = json.loads(scopes.replace("'", '"'))
    except json.JSONDecodeError:
        return ""
    mod = names[-2] if len(names) > 1 else ""
    return mod[len("model."):] if mod.startswith("model.") else ("" if mod == "model" else mod)


def float_by_rule(proto: onnx.ModelProto, exclude: dict[str, str]) -> dict[str, str]:
    """Nodes kept in float before any measurement: sensitive op types, and nodes whose name or module matches an
    exclusion pattern ({pattern: why})."""
    out = {}
    inits = {i.name for i in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type in KEEP_FLOAT:
            out[n.name] = f"{n.op_type}: sensitive op type kept in float"
            continue
        if n.op_type == "MatMul" and not any(i in inits for i in n.input):
            out[n.name] = ("MatMul of two activations (attention scores, token similarity): kept in float, "
                           "as the merge decisions read it")
            continue
        mod = module_of(n)
        why = next((w for p, w in exclude.items() if fnmatch.fnmatch(n.name, p) or (mod and fnmatch.fnmatch(mod, p))), None)
        if why:
            out[n.name] = why
    return out


def quantize_model(fp32: Path, out: Path, calib: np.ndarray, settings: Settings, float_nodes: dict[str, str],
                   cache: Path, bias_correction: bool) -> Quantized:
    """Quantize `fp32` into `out` (Q/DQ) with `settings`, keeping `float_nodes` in float.

    Args:
        calib: calibration images (float32, the model's input layout).
        cache: a folder for the calibration ranges (one file per calibration method, reused).
        bias_correction: correct the int32 biases on `calib` afterwards (bias.py; the shifts in `bias_shift`).

    Raises:
        OTCError: onnxruntime's quantizer failed (its message).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    t0 = time.perf_counter()
    proto = onnx.load(str(fp32), load_external_data=False)
    inp = proto.graph.input[0]
    dim = inp.type.tensor_type.shape.dim[0]
    batch = dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else 32
    cal = CALIBRATIONS[settings.calibration]
    scheme = SCHEMES[settings.scheme]
    extra = {"ActivationSymmetric": scheme.symmetric_activations, "WeightSymmetric": True, "MatMulConstBOnly": True,
             **dict(cal.options)}
    cache.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.redirect_stdout(io.StringIO()), _quiet():
            quantize_static(str(fp32), str(out), _Reader(calib, inp.name, batch), quant_format=QuantFormat.QDQ,
                            per_channel=settings.per_channel, reduce_range=settings.reduce_range,
                            activation_type=getattr(QuantType, scheme.activation), weight_type=getattr(QuantType, scheme.weight),
                            calibrate_method=getattr(CalibrationMethod, cal.method), op_types_to_quantize=list(OP_TYPES),
                            nodes_to_exclude=sorted(float_nodes), extra_options=extra,
                            calibration_cache_path=str(cache / f"ranges-{settings.calibration}.json"))
    except Exception as e:
        raise OTCError(f"{fp32.name}: onnxruntime's quantizer failed with {settings.label}: {type(e).__name__}: "
                       f"{str(e)[:300]}") from None
    shift = correct_bias(fp32, out, calib) if bias_correction else {}
    return Quantized(out, settings, dict(float_nodes), time.perf_counter() - t0, shift)


@contextlib.contextmanager
def _quiet():
    """onnxruntime's quantizer logs a pre-processing hint on every call."""
    log = logging.getLogger()
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)
