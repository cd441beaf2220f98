"""Empirical bias correction of a Q/DQ model: quantized weights and activations shift the mean of every
convolution's and Gemm's output per channel (clipping to a calibrated range and rounding are not zero-mean), and
the shift compounds through depth. Measured on calibration images, the FP32 model's per-channel mean
of each weighted op's output minus the INT8 model's is added to that op's int32 bias, one op at a time in graph
order, each measured on the INT8 model with every correction upstream of it already in place. Correcting all
at once does not converge on residual networks (a shift upstream reaches every later layer through the
shortcuts: on held-out images ResNet-56's logit mean shift grew 7x in two whole-model passes; one op at a time
it falls 3.5x, and 5x averaged over its layers).
NNCF's fast bias correction corrects each layer for its own error on FP32 inputs; this also removes what the
layers upstream left.

The shifts are returned ({bias tensor: float shift per channel}) so the plan records them and the gate's
fake-quantized reference applies the same biases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .plan import tensor_name

BATCH = 64


def _biased(proto: onnx.ModelProto) -> dict[str, tuple[onnx.NodeProto, onnx.NodeProto]]:
    """{weighted node name: (node, the DequantizeLinear of its int32 bias initializer)}."""
    inits = {i.name: i for i in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    out = {}
    for n in proto.graph.node:
        if n.op_type not in ("Conv", "Gemm") or len(n.input) < 3 or not n.input[2]:
            continue
        dq = producer.get(n.input[2])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits or dq.input[1] not in inits:
            continue
        if inits[dq.input[0]].data_type != onnx.TensorProto.INT32:
            continue
        out[n.name] = (n, dq)
    return out


def _channel_means(proto: onnx.ModelProto, tensors: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel (axis 1) mean of each named tensor over the images `x` (float64)."""
    import onnxruntime as ort

    p = onnx.ModelProto()
    p.CopyFrom(proto)
    have = {o.name for o in p.graph.output}
    p.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in tensors if t not in have)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(p.SerializeToString(), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    fixed = proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value
    step = fixed if fixed > 0 else min(BATCH, len(x))
    sums, count = {t: 0.0 for t in tensors}, {t: 0 for t in tensors}
    for i in range(0, len(x) - (step - 1 if fixed > 0 else 0), step):  # a static batch: whole batches only
        for t, v in zip(tensors, sess.run(tensors, {name: np.ascontiguousarray(x[i:i + step])})):
            sums[t] = sums[t] + v.astype(np.float64).sum(axis=tuple(a for a in range(v.ndim) if a != 1))
            count[t] += v.size // v.shape[1]
    return {t: sums[t] / max(count[t], 1) for t in tensors}


def correct_bias(fp32: Path, int8: Path, calib: np.ndarray) -> dict[str, list[float]]:
    """Correct the int32 biases of the Q/DQ model at `int8` in place (see the module docstring).

    Args:
        fp32: the FP32 model it was quantized from (its weighted nodes carry the same names).
        calib: calibration images (float32, the model's input layout); fewer than a static batch corrects nothing.

    Returns:
        {bias tensor name as the plan names it: shift added per output channel, in float}.
    """
    ref = onnx.load(str(fp32))
    proto = onnx.load(str(int8))
    fnodes = {n.name: n for n in ref.graph.node}
    pairs = {k: v for k, v in _biased(proto).items() if k in fnodes and fnodes[k].op_type == v[0].op_type}
    fixed = proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value
    if not pairs or len(calib) < max(fixed, 1):
        return {}
    want = _channel_means(ref, [fnodes[k].output[0] for k in pairs], calib)
    inits = {i.name: i for i in proto.graph.initializer}
    shifts = {k: 0.0 for k in pairs}
    for k, (n, dq) in pairs.items():  # in graph (topological) order: each sees the corrections upstream of it
        got = _channel_means(proto, [n.output[0]], calib)[n.output[0]]
        delta = want[fnodes[k].output[0]] - got
        q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.int64)
        scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)
        if q.shape != delta.shape or not np.all(scale > 0):
            continue
        new = np.clip(q + np.rint(delta / scale).astype(np.int64), -(2 ** 31), 2 ** 31 - 1)
        inits[dq.input[0]].CopyFrom(numpy_helper.from_array(new.astype(np.int32), dq.input[0]))
        shifts[k] = (new - q) * scale
    onnx.save(proto, str(int8))
    return {tensor_name(dq): np.atleast_1d(shifts[k]).astype(np.float64).tolist()
            for k, (_, dq) in pairs.items() if np.any(shifts[k] != 0)}
