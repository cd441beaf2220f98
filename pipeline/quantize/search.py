"""Which quantization to ship: for `target = "auto"`, every candidate setting is quantized (the calibration
ranges computed once per method), scored on held-out calibration images against the FP32 model (the task's
agreement: top-1 agreement for classifiers, mAP against the FP32 detections for detectors, pixel agreement for
segmenters) and timed on this machine's onnxruntime; of those that agree, the ones within `SPEED_BAND` of the
fastest are level (a shared CPU's timing cannot rank them) and the one closest to the FP32 outputs among them
is taken. Speed does not depend on the bias values, so candidates are timed uncorrected first and then corrected
and scored fastest first, stopping where the rest are slower than the band of the fastest that agrees: the same
choice as scoring all, at the cost of the few that can win. Where none agrees,
the automatic fallback ranks the quantized layers by measured sensitivity (how much the output error falls
when that layer alone stays in float) and returns the most sensitive to float, one at a time, until the INT8
model agrees or `max_float` layers are float; what stayed float and why is recorded."""

from __future__ import annotations

import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ..errors import OTCError
from .build import Quantized, quantize_model
from .settings import DEFAULTS, Settings, Target, candidates

WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
SPEED_BAND = 0.05  # speeds closer than this to the fastest candidate's are timing noise on a shared CPU


def run(path: Path, x: np.ndarray, batch: int = 256) -> dict[str, np.ndarray]:
    """The model's outputs on x, on onnxruntime CPU, `batch` images at a time (a dynamic-batch model given
    thousands at once holds every activation of all of them)."""
    from otcompress.exporters.onnxruntime import OrtRunner

    with OrtRunner(path, providers=["CPUExecutionProvider"]) as r:
        return r.infer_batched(x, batch=batch)


def latencies(paths: list[Path], shape, threads: int | None = None, rounds: int = 3, runs: int = 5) -> list[dict[str, float]]:
    """Median onnxruntime CPU latency (ms) of each model at batch 1 and 32 (a static-batch model: its own), the
    models timed in turn, `rounds` times over: a slow spell of a shared CPU falls on all of them alike instead of
    on whichever was being timed."""
    from contextlib import ExitStack

    from otcompress.exporters.onnxruntime import OrtRunner

    with ExitStack() as stack:
        runners = [stack.enter_context(OrtRunner(p, providers=["CPUExecutionProvider"], threads=threads)) for p in paths]
        inputs = [{b: np.random.default_rng(0).standard_normal((b, *shape[1:])).astype(np.float32)
                   for b in ([r.batch] if r.batch else [1, 32])} for r in runners]
        times = [{b: [] for b in x} for x in inputs]
        for r, x in zip(runners, inputs):  # warm-up: a session's first runs allocate and reorder weights
            for v in x.values():
                for _ in range(3):
                    r.infer(v)
        for _ in range(rounds):
            for r, x, t in zip(runners, inputs, times):
                for b, v in x.items():
                    for _ in range(runs):
                        t0 = time.perf_counter()
                        r.infer(v)
                        t[b].append(time.perf_counter() - t0)
    return [{f"b{b}": 1e3 * statistics.median(ts) for b, ts in t.items()} for t in times]


@dataclass
class Choice:
    quantized: Quantized
    agreement: float
    candidates: list[dict] = field(default_factory=list)
    fallback: list[dict] = field(default_factory=list)


def quantizable(proto: onnx.ModelProto, float_nodes: dict) -> list[str]:
    return [n.name for n in proto.graph.node if n.op_type in WEIGHTED and n.name not in float_nodes]


def choose(fp32: Path, work: Path, calib: np.ndarray, held: np.ndarray, given: Settings, target: Target,
           float_nodes: dict[str, str], score, min_agreement: float, max_float: int, fallback: bool,
           progress=lambda msg: None, bias_correction: bool = DEFAULTS["bias_correction"]) -> Choice:
    """The quantization to ship (see the module docstring).

    Args:
        calib, held: calibration images for the ranges, and held-out ones to score on.
        score: score(fp32_outputs, int8_outputs) -> agreement in [0, 1] (the task's).
        progress: called with a line per candidate and per fallback step.
        bias_correction: every quantization's int32 biases corrected on `calib` (bias.py).
    """
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "ranges"
    want = run(fp32, held)
    shape = [1, *calib.shape[1:]]
    settings = candidates(target, given)
    rows: list[dict] = [{"settings": s.as_dict(), "label": s.label, "agreement": None, "output_error": None,
                         "latency_ms": None, "speedup_vs_fp32": None, "seconds": 0.0} for s in settings]
    drafts: dict[int, Quantized] = {}
    if target.measure:  # timed uncorrected (the biases' values do not change the speed), with FP32, interleaved
        for i, s in enumerate(settings):
            drafts[i] = quantize_model(fp32, work / f"candidate{i}.onnx", calib, s, float_nodes, cache, False)
        base, *lats = latencies([fp32] + [drafts[i].path for i in range(len(settings))], shape)
        for i, lat in enumerate(lats):
            rows[i].update(latency_ms=lat, fp32_latency_ms=base, seconds=round(drafts[i].seconds, 2),
                           speedup_vs_fp32=statistics.geometric_mean([base[k] / lat[k] for k in lat]))
    built: dict[int, Quantized] = {}
    for i in sorted(range(len(settings)), key=lambda i: -(rows[i]["speedup_vs_fp32"] or 0.0)):
        top = next((rows[j]["speedup_vs_fp32"] for j in built if rows[j]["agreement"] >= min_agreement), None)
        if top is not None and rows[i]["speedup_vs_fp32"] < top * (1 - SPEED_BAND):
            rows[i]["skipped"] = "slower than the band of the fastest candidate that agrees: cannot be chosen"
            progress(f"  {settings[i].label:<36} not scored: {rows[i]['skipped']}")
            continue
        if i in drafts and not bias_correction:
            q, extra = drafts[i], 0.0
        else:
            q = quantize_model(fp32, work / f"candidate{i}.onnx", calib, settings[i], float_nodes, cache, bias_correction)
            extra = q.seconds
        got = run(q.path, held)
        a, err = float(score(want, got)), _error(want, got)
        rows[i].update(agreement=a, output_error=err, seconds=round(rows[i]["seconds"] + extra, 2))
        built[i] = q
        speed = rows[i]["speedup_vs_fp32"]
        progress(f"  {settings[i].label:<36} agreement {a:.4f}  error {err:.2e}" + (f"  {speed:.2f}x FP32 speed" if speed else ""))
    i = pick(rows, min_agreement)
    q, a = built[i], rows[i]["agreement"]
    ok = a >= min_agreement
    steps = []
    if not ok and fallback:
        q, a, steps = _fallback(fp32, work, calib, held, q, a, want, score, min_agreement, max_float, cache, progress,
                                bias_correction)
    final = work / "chosen.onnx"
    shutil.copyfile(q.path, final)
    q.path = final
    return Choice(q, a, rows, steps)


def pick(rows: list[dict], min_agreement: float, band: float = SPEED_BAND) -> int:
    """Index of the candidate to ship (see the module docstring).

    Args:
        rows: per candidate "agreement", "output_error" (None where it was not scored) and "speedup_vs_fp32" (None
            where speed is not measured).
        band: speeds within this fraction of the fastest agreeing candidate's count as level.

    Returns the lowest-error candidate among the level-fastest that agree; where none agrees, the one with the
    highest agreement (then the lowest error), which the fallback starts from.
    """
    scored = [i for i, r in enumerate(rows) if r["agreement"] is not None]
    ok = [i for i in scored if rows[i]["agreement"] >= min_agreement]
    if not ok:
        return max(scored, key=lambda i: (rows[i]["agreement"], -rows[i]["output_error"]))
    speed = {i: rows[i]["speedup_vs_fp32"] or 0.0 for i in ok}
    top = max(speed.values())
    level = [i for i in ok if speed[i] >= top * (1 - band)]
    return min(level, key=lambda i: (rows[i]["output_error"], -speed[i]))


def _fallback(fp32, work, calib, held, q: Quantized, agreement, want, score, min_agreement, max_float, cache, progress,
              bias_correction):
    """Return the most sensitive layers to float, one at a time (see the module docstring)."""
    proto = onnx.load(str(fp32), load_external_data=False)
    err = _error(want, run(q.path, held))
    gains = []
    for name in quantizable(proto, q.float_nodes):  # sensitivity: the output error this layer alone causes
        trial = quantize_model(fp32, work / "probe.onnx", calib, q.settings,
                               {**q.float_nodes, name: "probe"}, cache, False)  # a ranking: uncorrected, cheap
        gains.append((err - _error(want, run(trial.path, held)), name))
    gains.sort(reverse=True)
    steps, floats = [], dict(q.float_nodes)
    for gain, name in gains[:max_float]:
        if agreement >= min_agreement:
            break
        floats[name] = f"returned to float by the fallback: the most sensitive layer left (output error -{gain:.3g})"
        q = quantize_model(fp32, work / "fallback.onnx", calib, q.settings, floats, cache, bias_correction)
        agreement = float(score(want, run(q.path, held)))
        steps.append({"node": name, "error_reduction": gain, "agreement": agreement})
        progress(f"  fallback: {name} to float -> agreement {agreement:.4f}")
    if agreement < min_agreement:
        raise OTCError(f"quantize: the INT8 model agrees with the FP32 one on {agreement:.4f} of the held-out calibration "
                       f"images after {len(steps)} layers returned to float (min_agreement {min_agreement}, max_float "
                       f"{max_float}); raise max_float, lower min_agreement or exclude layers")
    return q, agreement, steps


def _error(want: dict, got: dict) -> float:
    return float(sum(np.mean((want[k].astype(np.float64) - got[k]) ** 2) / max(np.var(want[k]), 1e-12) for k in want))

