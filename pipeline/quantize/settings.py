"""The quantization options, each a registry entry, and their defaults (defined here once; the quantize stage's
keys and the Python API read them). The defaults were chosen on the INT8 benchmark (bench/int8.py, README)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..registry import Registry


@dataclass(frozen=True)
class Calibration:
    """How activation ranges are taken from the calibration images (onnxruntime's CalibrationMethod)."""

    name: str
    method: str  # onnxruntime CalibrationMethod member
    options: tuple = ()  # onnxruntime extra_options for it, as (key, value) pairs


CALIBRATIONS = Registry("calibration method")
CALIBRATIONS.register("minmax", Calibration("minmax", "MinMax"))
CALIBRATIONS.register("entropy", Calibration("entropy", "Entropy"))
CALIBRATIONS.register("percentile", Calibration("percentile", "Percentile", (("CalibPercentile", 99.999),)))


@dataclass(frozen=True)
class Scheme:
    """The integer types: activations (uint8 asymmetric or int8 symmetric) and weights (int8 symmetric).
    u8s8 is what onnxruntime's CPU kernels run fastest without VNNI; s8s8 is TensorRT's explicit quantization."""

    name: str
    activation: str  # "QUInt8" | "QInt8" (onnxruntime QuantType)
    weight: str
    symmetric_activations: bool


SCHEMES = Registry("quantization scheme")
SCHEMES.register("u8s8", Scheme("u8s8", "QUInt8", "QInt8", False))
SCHEMES.register("s8s8", Scheme("s8s8", "QInt8", "QInt8", True))


@dataclass(frozen=True)
class Settings:
    """One quantization: calibration method, scheme, per-channel weights, 7-bit weights (reduce_range)."""

    calibration: str
    scheme: str
    per_channel: bool
    reduce_range: bool

    @property
    def label(self) -> str:
        return (f"{self.scheme} {'per-channel' if self.per_channel else 'per-tensor'} {self.calibration}"
                + (" reduce_range" if self.reduce_range else ""))

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Target:
    """Where the INT8 model runs: which settings it may take (`fixed`: the recipe's alone) and whether they are
    chosen by measuring speed on this machine."""

    name: str
    measure: bool
    schemes: tuple[str, ...] | None = None  # None: the recipe's
    per_channel: tuple[bool, ...] | None = None
    reduce_range: tuple[bool, ...] | None = None


TARGETS = Registry("quantization target")
TARGETS.register("auto", Target("auto", True, ("u8s8", "s8s8"), (True, False), (False, True)))
TARGETS.register("fixed", Target("fixed", False))
TARGETS.register("tensorrt", Target("tensorrt", False, ("s8s8",), (True,), (False,)))

# op types kept in float: normalisations and exponentials lose most in 8 bits (Model Optimizer keeps them too)
KEEP_FLOAT = ("Softmax", "LayerNormalization", "Gelu", "Erf", "Exp", "Log", "InstanceNormalization", "GroupNormalization")

DEFAULTS = {
    "calibration": "minmax",
    "scheme": "u8s8",
    "per_channel": True,
    "reduce_range": False,
    "target": "auto",
    "samples": 512,
    "seed": 0,
    # of the INT8 model with the FP32 one on held-out calibration images (fallback until then): 0.98 as the validate
    # stage's min_int8_agreement; 0.99 on 128 held-out images allows one disagreement, which a shrunk ResNet-56's
    # low margins exceed with every quantizer (onnxruntime's defaults: 0.986 on the test images)
    "min_agreement": 0.98,
    "max_float": 24,  # layers the fallback may return to float
    "bias_correction": True,  # int32 biases corrected on the calibration images (bias.py)
}


def candidates(target: Target, given: Settings) -> list[Settings]:
    """The settings a target may take, the recipe's first."""
    schemes = target.schemes or (given.scheme,)
    per = target.per_channel or (given.per_channel,)
    rr = target.reduce_range or (given.reduce_range,)
    out = [given] if target.schemes is None or given.scheme in schemes else []
    for s in schemes:
        for p in per:
            for r in rr:
                c = Settings(given.calibration, s, p, r)
                if c not in out:
                    out.append(c)
    return out
