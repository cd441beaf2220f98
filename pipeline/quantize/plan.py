"""The quantization plan of a Q/DQ model: every quantized tensor of the FP32 graph (activations by the tensor
name they quantize, weights and biases by their initializer name) with its scale, zero point, integer type and
axis. Recorded when the model is quantized; the gate rebuilds its fake-quantized reference from it and checks
that the file still holds it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import InternalError


WEIGHTED = ("Conv", "ConvTranspose", "MatMul", "Gemm")  # ops whose input 1 is a weight (int8, symmetric)


def _value(inits: dict, name: str) -> np.ndarray | None:
    t = inits.get(name)
    return numpy_helper.to_array(t) if t is not None else None


def tensor_name(dq: onnx.NodeProto) -> str:
    """The FP32 tensor a DequantizeLinear of a stored integer tensor (weight or bias) stands for."""
    return dq.output[0].removesuffix("_DequantizeLinear_Output").removesuffix("_quantized")


def read_plan(path: Path) -> dict[str, dict]:
    """{fp32 tensor name: {kind, scale, zero_point, dtype, axis}} of the Q/DQ model at `path`."""
    proto = onnx.load(str(path))
    inits = {i.name: i for i in proto.graph.initializer}
    readers: dict[str, list] = {}
    for n in proto.graph.node:
        for i, t in enumerate(n.input):
            readers.setdefault(t, []).append((n, i))

    def weighted(t: str, depth: int = 2) -> bool:
        """Whether tensor t (through its Q/DQ) is the weight input of a conv, matmul or gemm."""
        for n, i in readers.get(t, []):
            if n.op_type in WEIGHTED and i == 1:
                return True
            if depth and n.op_type in ("QuantizeLinear", "DequantizeLinear") and weighted(n.output[0], depth - 1):
                return True
        return False

    plan = {}
    for n in proto.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        axis = next((a.i for a in n.attribute if a.name == "axis"), None)
        scale, zp = _value(inits, n.input[1]), _value(inits, n.input[2]) if len(n.input) > 2 else None
        if n.op_type == "QuantizeLinear":  # (a graph output's producer is renamed X_QuantizeLinear_Input)
            name, kind = n.input[0].removesuffix("_QuantizeLinear_Input"), "weight" if n.input[0] in inits else "activation"
        elif n.input[0] in inits:  # a DQ of a stored integer tensor: a weight or a bias
            name = tensor_name(n)
            kind = "bias" if numpy_helper.to_array(inits[n.input[0]]).dtype == np.int32 else "weight"
        else:
            continue  # the DQ half of an activation's pair: its Q carries the parameters
        if kind == "weight" and not weighted(n.output[0]):
            kind = "constant"  # a stored tensor another op reads (a class token, a position table): an activation's types
        if name in plan:
            continue
        plan[name] = {"kind": kind, "scale": np.atleast_1d(scale).astype(np.float64).tolist(),
                      "zero_point": np.atleast_1d(zp if zp is not None else 0).astype(np.int64).tolist(),
                      "dtype": str(zp.dtype) if zp is not None else "uint8",
                      "axis": int(axis) if axis is not None and np.size(scale) > 1 else None,
                      "shape": list(inits[n.input[0]].dims) if n.input[0] in inits else None}
    return plan


def add_shifts(plan: dict, shifts: dict[str, list[float]]) -> None:
    """Record bias correction's shifts in the plan (a bias entry's `shift`: added to the FP32 bias before it is
    rounded to its grid), so the gate's reference uses the biases the file holds.

    Raises:
        InternalError: a shifted bias the file does not quantize.
    """
    for name, shift in shifts.items():
        if plan.get(name, {}).get("kind") != "bias":
            raise InternalError(f"quantize: bias correction shifted {name}, which the file does not hold as a bias")
        plan[name]["shift"] = list(shift)


def check_plan(plan: dict, per_channel: bool, scheme) -> None:
    """What onnxruntime wrote agrees with what it was asked (per-channel weights where asked, symmetric integers
    where the scheme says so): a disagreement is a bug to report, never a silent other quantization."""
    for name, q in plan.items():
        if q["kind"] == "weight":
            if q["dtype"] != "int8" or any(z != 0 for z in q["zero_point"]):
                raise InternalError(f"quantize: weight {name} quantized as {q['dtype']} with zero points "
                                    f"{q['zero_point'][:4]}; asked for symmetric int8")
            conv = q["shape"] is not None and len(q["shape"]) == 4 and q["shape"][0] > 1
            if per_channel and conv and len(q["scale"]) == 1:
                raise InternalError(f"quantize: convolution weight {name} got one scale; asked for per-channel scales")
        elif q["kind"] == "activation" and scheme.symmetric_activations:
            if q["dtype"] != "int8" or any(z != 0 for z in q["zero_point"]):
                raise InternalError(f"quantize: activation {name} is {q['dtype']} with zero point {q['zero_point']}; "
                                    f"the {scheme.name} scheme is symmetric int8")
