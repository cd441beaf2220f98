"""Static INT8 quantization of an exported ONNX model into a Q/DQ model (model.int8.onnx), with onnxruntime's
quantization tooling doing the calibration and the Q/DQ insertion (a well-kept implementation of a solved
problem), and otcompress deciding what it is asked: the settings (a registry entry each: calibration method,
scheme, granularity, reduce_range), which ops stay in float (sensitive op types, the exclusions a model family
names, and the layers an automatic fallback returns to float, most sensitive first, until the INT8 model agrees
with the FP32 one), and for `target = "auto"` which setting is fastest on this machine among those that agree.

calibrate.py (ranges once, reused by every candidate), settings.py (the options and their registries),
placement.py (what is quantized), build.py (one quantization), plan.py (the scales and zero points a file
holds: what the gate checks against), search.py (fallback and target selection)."""

from .build import Quantized, quantize_model
from .settings import CALIBRATIONS, DEFAULTS, SCHEMES, TARGETS, Settings

__all__ = ["CALIBRATIONS", "DEFAULTS", "SCHEMES", "TARGETS", "Quantized", "Settings", "quantize_model"]
