"""Budgets in measured latency (HALP-style): every conv/linear layer of the model is timed alone on the target
runtime (onnxruntime CPU: a one-node ONNX model at the layer's own geometry, batch and threads) at a grid of
input and output channel counts, the table cached per machine and reused by every run and sweep; a model's
latency at given keep ratios is predicted from it (bilinear between grid points) and calibrated on two
measurements of the whole model (dense, and uniformly shrunk), since a graph is not the sum of its ops
(fusions, memory, the ops between the layers). The prediction drives the allocation; the shrunk model is then
measured, and the report states both.

round_to = "auto" takes the channel multiple whose shrunk model runs fastest per FLOP on this machine (onnxruntime's CPU
kernels pack channels in blocks: counts off the block cost a partial block)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from ..registry import Registry

from .flops import FlopsModel, per_layer
from .groups import CONV, Group, is_depthwise

GRID = (0.25, 0.5, 0.75, 1.0)  # kept fractions at which every layer is timed
CACHE = Path(os.environ.get("OTC_LATENCY_CACHE", Path.home() / ".cache" / "otcompress" / "latency"))


def machine() -> str:
    """What the table is valid for: CPU model, cores, onnxruntime version."""
    import onnxruntime

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return f"{cpu} | {os.cpu_count()} cpus | onnxruntime {onnxruntime.__version__}"


class LayerTable:
    """Median onnxruntime latency of one layer alone at given channel counts, measured on demand and cached
    (one JSON file per machine, threads and batch)."""

    def __init__(self, threads: int = 2, batch: int = 1, runs: int = 20, cache: Path | None = None):
        self.threads, self.batch, self.runs = threads, batch, runs
        key = hashlib.sha256(f"{machine()}|{threads}|{batch}".encode()).hexdigest()[:16]
        self.path = (cache or CACHE) / f"{key}.json"
        self.data: dict[str, float] = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.measured = 0

    def ms(self, spec: dict, cin: int, cout: int) -> float:
        key = json.dumps([spec, cin, cout], sort_keys=True)
        if key not in self.data:
            self.data[key] = _time_layer(spec, cin, cout, self.batch, self.threads, self.runs)
            self.measured += 1
        return self.data[key]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data))
        os.replace(tmp, self.path)


def _time_layer(spec: dict, cin: int, cout: int, batch: int, threads: int, runs: int) -> float:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if spec["op"] == "Conv":
        groups = cin if spec["depthwise"] else 1
        cout = cin if spec["depthwise"] else cout
        w = rng.standard_normal((cout, cin // groups, *spec["kernel"])).astype(np.float32)
        shape = [batch, cin, *spec["hw"]]
        node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=spec["kernel"], strides=spec["stride"],
                                pads=spec["pads"], dilations=spec["dilation"], group=groups)
    else:
        w = rng.standard_normal((cin, cout)).astype(np.float32)
        shape = [batch, *spec["lead"], cin]
        node = helper.make_node("MatMul", ["x", "w"], ["y0"])
    b = rng.standard_normal(cout).astype(np.float32)
    nodes = [node] if spec["op"] == "Conv" else [node, helper.make_node("Add", ["y0", "b"], ["y"])]
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.log_severity_level = threads, 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = rng.standard_normal(shape).astype(np.float32)
    for _ in range(3):
        sess.run(None, {"x": x})
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {"x": x})
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def layer_specs(model: nn.Module, example: torch.Tensor) -> dict[str, dict]:
    """Each conv/linear layer's geometry at the example's shape (its input's spatial size, kernel, stride, ...)."""
    def spec(m, x, o):
        if isinstance(m, CONV):
            if m.groups > 1 and not is_depthwise(m) or m.weight.dim() != 4 or isinstance(m, nn.modules.conv._ConvTransposeNd):
                return {"op": "fixed", "ms": None}
            pads = list(m.padding) * 2 if not isinstance(m.padding, str) else [0, 0, 0, 0]
            return {"op": "Conv", "kernel": list(m.kernel_size), "stride": list(m.stride), "pads": pads,
                    "dilation": list(m.dilation), "hw": list(x.shape[2:]), "depthwise": is_depthwise(m)}
        return {"op": "Linear", "lead": list(x.shape[1:-1])}

    return per_layer(model, example, spec)


class LatencyModel(FlopsModel):
    """Predicted latency as a function of each group's keep ratio (the same per-layer input/output shares as
    FlopsModel), calibrated to measurements: ratio(keeps) is the fraction of the measured dense latency."""

    def __init__(self, model: nn.Module, example: torch.Tensor, groups: list[Group], table: LayerTable):
        super().__init__(model, example, groups)
        specs = layer_specs(model, example)
        mods = dict(model.named_modules())
        self.layers = []
        for name in self.base:
            m, spec = mods[name], specs.get(name)
            if spec is None or spec["op"] == "fixed":
                continue
            cin = m.in_features if isinstance(m, nn.Linear) else m.in_channels
            cout = m.out_features if isinstance(m, nn.Linear) else m.out_channels
            grid = np.array([[table.ms(spec, max(1, round(fi * cin)), max(1, round(fo * cout))) for fo in GRID]
                             for fi in GRID])
            self.layers.append((list(self.base).index(name), grid, spec["op"] == "Conv" and spec["depthwise"]))
        table.save()
        self.alpha, self.beta = 1.0, 0.0
        self.dense_ms = self.predicted_ms(None)
        self.measured_dense_ms = self.dense_ms
        self.floor: float | None = None  # measured fraction of dense at FLOOR_KEEP (set by `calibrated`)

    def predicted_ms(self, keep) -> float:
        """Sum of the layers' table latencies at these keep ratios (None: dense), calibrated."""
        if keep is None:
            fin = fout = np.ones(len(self.base))
        else:
            k = np.concatenate([np.asarray(keep, dtype=np.float64), [1.0]])
            fin, fout = self.a_in.numpy() @ k, self.a_out.numpy() @ k
        total = 0.0
        for row, grid, depthwise in self.layers:
            i, o = (fout[row], fout[row]) if depthwise else (fin[row], fout[row])
            total += _bilinear(grid, i, o)
        return self.alpha * total + self.beta

    def calibrate(self, points: list[tuple[list[float] | None, float]]) -> None:
        """Fit measured = alpha * predicted + beta to measured (keeps, ms) points of the whole model, the line
        through the dense point (keeps None, the reference every ratio divides by) and least squares over the
        others; a pure scale from one point, or where noise inverts the trend."""
        self.alpha, self.beta = 1.0, 0.0
        dense = [m for k, m in points if k is None]
        self.measured_dense_ms = float(dense[0]) if dense else self.predicted_ms(None)
        p0, m0 = self.predicted_ms(None), self.measured_dense_ms
        rest = np.array([(self.predicted_ms(k), m) for k, m in points if k is not None]).reshape(-1, 2)
        dp, dm = rest[:, 0] - p0, rest[:, 1] - m0
        alpha = float(dp @ dm / (dp @ dp)) if len(rest) and dp @ dp > 0 else 0.0
        if alpha > 0:
            self.alpha, self.beta = alpha, m0 - alpha * p0
        else:
            self.alpha = m0 / p0

    def ratio(self, keep) -> torch.Tensor:
        k = keep.detach().cpu().numpy() if isinstance(keep, torch.Tensor) else keep
        return torch.tensor(self.predicted_ms(list(k)) / self.measured_dense_ms, dtype=torch.float64)


def _bilinear(grid: np.ndarray, fi: float, fo: float) -> float:
    """grid[i][o] at GRID fractions, interpolated (linearly extrapolated below the first point)."""
    g = np.asarray(GRID)

    def locate(f):
        j = int(np.clip(np.searchsorted(g, f) - 1, 0, len(g) - 2))
        return j, (f - g[j]) / (g[j + 1] - g[j])

    i, ti = locate(fi)
    o, to = locate(fo)
    top = grid[i, o] * (1 - to) + grid[i, o + 1] * to
    bottom = grid[i + 1, o] * (1 - to) + grid[i + 1, o + 1] * to
    return float(max(top * (1 - ti) + bottom * ti, 0.0))


@dataclass(frozen=True)
class Runtime:
    """What a latency is measured on: `prepare(fp32_onnx, inputs)` makes the exported FP32 file into the file the
    target runs (itself, an INT8 model, an engine), `runner(file, threads)` a Runner that times it, `check()`
    raises OTCError where it is not installed here (called before any work)."""

    name: str
    describe: str
    prepare: Callable[[Path, np.ndarray], Path]
    runner: Callable[[Path, int], object]
    check: Callable[[], None] = lambda: None


def _as_exported(path: Path, x: np.ndarray) -> Path:
    return path


def _int8(path: Path, x: np.ndarray) -> Path:
    """The quantize stage's default settings and placement (Q/DQ, u8s8, per-channel): the model the stage ships,
    up to its scales, which do not change speed; calibrated on the timing inputs."""
    import onnx

    from ..quantize.build import float_by_rule, quantize_model
    from ..quantize.settings import DEFAULTS, Settings

    out = path.with_suffix(".int8.onnx")
    settings = Settings(DEFAULTS["calibration"], DEFAULTS["scheme"], DEFAULTS["per_channel"], DEFAULTS["reduce_range"])
    quantize_model(path, out, x, settings, float_by_rule(onnx.load(str(path), load_external_data=False), {}),
                   path.with_suffix(".ranges"), False)
    return out


def _engine(precision: str):
    def prepare(path: Path, x: np.ndarray) -> Path:
        from otcompress.exporters.tensorrt import build_engine

        if precision == "int8":
            path = _int8(path, x)
        build_engine(path, path.with_suffix(".plan"), precision=precision, max_batch=len(x))
        return path.with_suffix(".plan")

    return prepare


def _ort_runner(path: Path, threads: int):
    from otcompress.exporters.onnxruntime import OrtRunner

    return OrtRunner(path, providers=["CPUExecutionProvider"], threads=threads)


def _trt_check() -> None:
    from otcompress.exporters.tensorrt import import_tensorrt

    import_tensorrt()


def _trt_runner(path: Path, threads: int):
    from otcompress.exporters.tensorrt import TrtRunner

    return TrtRunner(path)


RUNTIMES = Registry("latency runtime")
RUNTIMES.register("onnxruntime", Runtime("onnxruntime", "onnxruntime CPU", _as_exported, _ort_runner))
RUNTIMES.register("onnxruntime-int8", Runtime("onnxruntime-int8", "onnxruntime CPU, INT8", _int8, _ort_runner))
RUNTIMES.register("tensorrt-fp16", Runtime("tensorrt-fp16", "TensorRT FP16", _engine("fp16"), _trt_runner,
                                            _trt_check))
RUNTIMES.register("tensorrt-int8", Runtime("tensorrt-int8", "TensorRT INT8 (Q/DQ)", _engine("int8"), _trt_runner,
                                            _trt_check))
DEFAULT_RUNTIME = "onnxruntime"


def measure_models(models: list[nn.Module], example: torch.Tensor, threads: int = 2, batch: int = 1,
                   rounds: int = 5, seconds: float = 0.15, runtime: str = DEFAULT_RUNTIME) -> list[float]:
    """Each model's median latency (ms) at `batch` on `runtime` (a RUNTIMES name; onnxruntime CPU by default):
    every model exported once (and made into what the runtime runs), then timed in `rounds`, each model once per
    round for at least `seconds` (and 20 runs), so a shared machine's drift hits every model alike; the median of
    the rounds' medians.

    Raises:
        OTCError: an unknown runtime, or one not installed here (TensorRT), naming it.
    """
    from otcompress.exporters.onnx import export_onnx

    rt = RUNTIMES[runtime]
    x = np.random.default_rng(0).standard_normal((batch, *example.shape[1:])).astype(np.float32)
    with tempfile.TemporaryDirectory() as td:
        runners = []
        for i, model in enumerate(models):
            path = Path(td) / f"m{i}.onnx"
            export_onnx(model, torch.zeros((batch, *example.shape[1:])), path)
            runners.append(rt.runner(rt.prepare(path, x), threads))
        meds = [[] for _ in models]
        try:
            for r in runners:
                r.activate()
                for _ in range(5):
                    r.infer(x)
            for _ in range(rounds):
                for r, med in zip(runners, meds):
                    ts, start = [], time.perf_counter()
                    while len(ts) < 20 or time.perf_counter() - start < seconds:
                        t0 = time.perf_counter()
                        r.infer(x)
                        ts.append(time.perf_counter() - t0)
                    med.append(statistics.median(ts))
        finally:
            for r in runners:
                r.deactivate()
    return [1e3 * statistics.median(m) for m in meds]


def measure_model(model: nn.Module, example: torch.Tensor, threads: int = 2, batch: int = 1,
                  runtime: str = DEFAULT_RUNTIME) -> float:
    """One model's median latency (ms) at `batch` on `runtime` (measure_models of one)."""
    return measure_models([model], example, threads=threads, batch=batch, runtime=runtime)[0]


def fast_multiple(model: nn.Module, example: torch.Tensor, threads: int = 2, batch: int = 1,
                  candidates=(1, 4, 8, 16), flops: float = 0.7, runtime: str = DEFAULT_RUNTIME,
                  reach: float | None = None, **shrink) -> int:
    """round_to = "auto": the smallest channel multiple whose model at `flops` of the FLOPs (uniform allocation)
    runs within 3% of the fastest. Measured on the whole model, the candidates timed interleaved, not layer by
    layer: onnxruntime's CPU kernels work in blocked layouts (NCHWc: 8 channels with AVX2, 16 with AVX-512) and
    a count off the block makes them reorder between layers (an unrounded MobileNetV2 at 70% of its FLOPs runs
    slower than dense), a cost no single layer shows. At equal FLOPs, so a multiple is judged on speed alone.

    `reach`: the FLOPs fraction the stage is asked for; a multiple too coarse to reach it within 2% (ResNet-56 at
    16: its 16-channel stages cannot shrink, 50% stops at 59%) is passed over for the next fastest that does."""
    import copy

    from .shrink import shrink_channels

    smalls = []
    for c in candidates:
        small = copy.deepcopy(model)
        shrink_channels(small, example, "prune", flops=flops, round_to=c, progress=False, **shrink)
        smalls.append(small)
    ms = measure_models(smalls, example, threads=threads, batch=batch, rounds=3, runtime=runtime)
    ok = [(c, t) for c, t in zip(candidates, ms) if reach is None or _reaches(model, example, c, reach, **shrink)]
    ok = ok or [(min(candidates), 0.0)]
    return next(c for c, t in ok if t <= 1.03 * min(t for _, t in ok))


def _reaches(model: nn.Module, example: torch.Tensor, multiple: int, flops: float, **shrink) -> bool:
    """Whether pruning to `flops` with channel counts in multiples of `multiple` gets within 2% of it."""
    import copy

    from .flops import layer_flops
    from .shrink import shrink_channels

    small = copy.deepcopy(model)
    shrink_channels(small, example, "prune", flops=flops, round_to=multiple, progress=False, **shrink)
    return sum(layer_flops(small, example).values()) <= 1.02 * flops * sum(layer_flops(model, example).values())


FLOOR_KEEP = GRID[0]  # the least every group keeps when the floor is measured: the table's lowest point


def calibrated(model: nn.Module, example: torch.Tensor, groups: list[Group], table: LayerTable,
               threads: int, batch: int, runtime: str = DEFAULT_RUNTIME, **shrink) -> LatencyModel:
    """A LatencyModel for `groups` of the (unshrunk) model, calibrated on measurements of the dense model and of
    copies pruned uniformly to half and to a quarter (FLOOR_KEEP) of their channels, timed interleaved. The
    quarter is also the model's floor (`lm.floor`, a fraction of dense): what shrinking channels alone reaches,
    since the nodes, memory traffic and the ops between the layers stay (a deep net at batch 1 is bound by them).
    On another runtime than onnxruntime CPU the table (FP32 layers on onnxruntime) is the shape of the prediction
    and these measurements on `runtime` its scale and offset."""
    import copy

    from .shrink import shrink_channels

    lm = LatencyModel(model, example, groups, table)
    keeps, smalls = [None], [model]
    for sparsity in (0.5, 1.0 - FLOOR_KEEP):
        small = copy.deepcopy(model)
        rec = shrink_channels(small, example, "prune", sparsity=sparsity, progress=False, **shrink)
        after = {r["group"]: r["after"] / r["before"] for r in rec}
        keeps.append([after.get(g.root, 1.0) for g in groups])
        smalls.append(small)
    ms = measure_models(smalls, example, threads=threads, batch=batch, runtime=runtime)
    lm.calibrate(list(zip(keeps, ms)))
    lm.floor = ms[-1] / ms[0]
    return lm


def refuse_below_floor(target: float, lm: LatencyModel, threads: int, batch: int, tolerance: float = 0.05,
                       runtime: str = DEFAULT_RUNTIME) -> None:
    """Raise OTCError when `target` (a fraction of dense latency) is below the measured floor: shrinking channels
    cannot reach it, and trying cuts a model to chance (every group far below FLOOR_KEEP) for nothing."""
    from ..errors import OTCError

    if target < lm.floor * (1 - tolerance):
        raise OTCError(f"latency = {target} is below what shrinking channels reaches on this model: every group at "
                       f"{FLOOR_KEEP:.0%} of its channels measured {lm.floor:.2f} of the dense {lm.measured_dense_ms:.2f} ms "
                       f"({RUNTIMES[runtime].describe}, batch {batch}, {threads} threads; the nodes and the ops between the layers "
                       f"stay); give latency >= {lm.floor:.2f}, a larger latency_batch, or a flops target")
