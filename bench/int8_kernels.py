"""Why a channel-shrunk INT8 CNN is not faster at batch 1 on onnxruntime CPU: one 3x3 convolution at the
geometries of the CIFAR ResNets' three stages, timed alone by onnxruntime's profiler (kernel time, 2 threads,
batch 1) as the integer QLinearConv that onnxruntime makes of a Q/DQ convolution (u8 activations, s8
symmetric per-channel weights) and as the FP32 Conv, over output channel counts. MLAS runs a u8s8 convolution
with symmetric weights as its indirect "ConvSym" kernel only when the layer has at least 16 output channels
(a multiple of its alignment) and input channels in multiples of 4; otherwise it falls back to im2col and a
general integer GEMM. bench/results/int8_kernels.json, int8_kernels.png and the README table.

    .venv/bin/python bench/int8_kernels.py [--runs 400]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np

from common import figure, publish

STAGES = ((32, 16), (16, 32), (8, 64))  # (spatial size, the stage's width) of the CIFAR ResNets
RNG = np.random.default_rng(0)


def conv_model(cin: int, cout: int, hw: int, int8: bool):
    from onnx import TensorProto, helper, numpy_helper

    if int8:
        consts = {"w": RNG.integers(-127, 128, (cout, cin, 3, 3)).astype(np.int8), "xs": np.array(0.05, np.float32),
                  "xz": np.array(0, np.uint8), "ws": np.full(cout, 0.01, np.float32), "wz": np.zeros(cout, np.int8),
                  "ys": np.array(0.2, np.float32), "yz": np.array(0, np.uint8), "b": np.zeros(cout, np.int32)}
        node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"],
                                ["y"], pads=[1] * 4)
        dtype = TensorProto.UINT8
    else:
        consts = {"w": RNG.standard_normal((cout, cin, 3, 3)).astype(np.float32), "b": np.zeros(cout, np.float32)}
        node = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1] * 4)
        dtype = TensorProto.FLOAT
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", dtype, [1, cin, hw, hw])],
                              [helper.make_tensor_value_info("y", dtype, None)],
                              [numpy_helper.from_array(v, k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def kernel_us(model, runs: int, prefix: str) -> float:
    """Median kernel time of the convolution (us), from onnxruntime's profiler, the first quarter of runs dropped."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.enable_profiling, so.log_severity_level = 2, True, 3
    so.profile_file_prefix = prefix
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = (RNG.integers(0, 256, inp.shape).astype(np.uint8) if "uint8" in inp.type
         else RNG.standard_normal(inp.shape).astype(np.float32))
    for _ in range(runs):
        sess.run(None, {inp.name: x})
    events = json.loads(Path(sess.end_profiling()).read_text())
    ts = [e["dur"] for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
          and e["args"]["op_name"] in ("QLinearConv", "Conv")]
    return float(statistics.median(ts[len(ts) // 4:]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=400)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as td:
        for hw, width in STAGES:
            for cout in sorted({width // 4, width // 2, 3 * width // 4, width, 8, 12, 16, 24}):
                if cout > width or cout < 4:
                    continue
                r = {"spatial": hw, "in_channels": width, "out_channels": cout,
                     "int8_us": kernel_us(conv_model(width, cout, hw, True), args.runs, f"{td}/q"),
                     "fp32_us": kernel_us(conv_model(width, cout, hw, False), args.runs, f"{td}/f")}
                rows.append(r)
                print(r, flush=True)
    publish("int8_kernels.json", {"rows": rows, "threads": 2, "batch": 1, "runs": args.runs}, plot, markdown,
            "int8_kernels")


def markdown(res: dict) -> str:
    lines = ["| stage (spatial, in channels) | out channels | INT8 QLinearConv µs | FP32 Conv µs | INT8 µs per out channel |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['spatial']}×{r['spatial']}, {r['in_channels']} | {r['out_channels']} | {r['int8_us']:.0f} | "
              f"{r['fp32_us']:.0f} | {r['int8_us'] / r['out_channels']:.2f} |" for r in res["rows"]]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    with figure(path, "output channels", "kernel time, batch 1 (µs)", (6, 4)) as ax:
        for hw, width in STAGES:
            rs = [r for r in res["rows"] if r["spatial"] == hw]
            line, = ax.plot([r["out_channels"] for r in rs], [r["int8_us"] for r in rs], "o-", label=f"INT8 {hw}×{hw}, in {width}")
            ax.plot([r["out_channels"] for r in rs], [r["fp32_us"] for r in rs], "x--", color=line.get_color(),
                    label=f"FP32 {hw}×{hw}, in {width}")

if __name__ == "__main__":
    main()
