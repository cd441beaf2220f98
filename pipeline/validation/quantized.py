"""The gate for a quantized artifact (model.int8.onnx). Its numbers cannot match the FP32 model element by
element to 1e-4, so, as the token gate replays decisions, the INT8 model is compared with a reference that
applies the *same* quantization: the FP32 export with the recorded plan's scales and zero points applied as
fake quantization (Quantize/Dequantize in float, weights and biases rounded to their integer grids, biases
shifted first where bias correction recorded a shift), run
without graph optimisations, so every op computes in float what the integer kernels compute in integers.
What remains between the two is integer rounding of requantized intermediate values (a few quantization steps
of the output at most), so the tolerance is counted in steps of the output's own quantization.

A second check requires the file to hold the plan: the same quantized tensors, scales (to float32 precision),
zero points, types and axes; a scale off by 2x, a shifted zero point, per-tensor weights where the plan has
per-channel ones, a residual add left unquantized where the plan quantized it, all fail it by name."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from otcompress.exporters.onnxruntime import OrtRunner

from .checks import Check, compare

RANGE = {"uint8": (0, 255), "int8": (-128, 127), "int32": (-(2 ** 31), 2 ** 31 - 1)}


def _fake(w: np.ndarray, q: dict) -> np.ndarray:
    s = np.asarray(q["scale"], dtype=np.float64)
    z = np.asarray(q["zero_point"], dtype=np.float64)
    if q["axis"] is not None and s.size > 1:
        shape = [1] * w.ndim
        shape[q["axis"]] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    lo, hi = RANGE.get(q["dtype"], RANGE["int8"])
    return ((np.clip(np.rint(w / s) + z, lo, hi) - z) * s).astype(w.dtype)


def reference_model(fp32: Path, plan: dict, out: Path) -> Path:
    """The FP32 model with the plan applied as fake quantization (see the module docstring), written to `out`."""
    proto = onnx.load(str(fp32))
    g = proto.graph
    inits = {i.name: i for i in g.initializer}
    for name, q in plan.items():
        if q["kind"] in ("weight", "bias", "constant") and name in inits:
            arr = numpy_helper.to_array(inits[name])
            if "shift" in q:  # bias correction's (otcompress.quantize.bias)
                arr = arr + np.asarray(q["shift"], dtype=arr.dtype)
            inits[name].CopyFrom(numpy_helper.from_array(_fake(arr.astype(np.float64), q).astype(arr.dtype), name))
    outputs = {o.name for o in g.output}
    new_nodes = []
    for name, q in plan.items():
        if q["kind"] != "activation":
            continue
        src = name
        if name in outputs:  # a graph output stays the graph output, fake-quantized
            src = f"{name}__fp32"
            for n in g.node:
                n.output[:] = [src if o == name else o for o in n.output]
        scale, zp = f"{name}__ref_scale", f"{name}__ref_zp"
        dtype = onnx.TensorProto.UINT8 if q["dtype"] == "uint8" else onnx.TensorProto.INT8
        g.initializer.extend([numpy_helper.from_array(np.float32(q["scale"][0]), scale),
                              helper.make_tensor(zp, dtype, [], [int(q["zero_point"][0])])])
        fq = name if name in outputs else f"{name}__ref_fq"
        new_nodes += [helper.make_node("QuantizeLinear", [src, scale, zp], [f"{name}__ref_q"]),
                      helper.make_node("DequantizeLinear", [f"{name}__ref_q", scale, zp], [fq])]
        if name not in outputs:
            for n in g.node:
                n.input[:] = [fq if i == name else i for i in n.input]
    _insert(g, new_nodes)
    onnx.save(proto, str(out))
    return out


def _insert(g, nodes) -> None:
    """Add nodes and restore a topological order (onnxruntime requires one)."""
    allnodes = list(g.node) + nodes
    ready = {i.name for i in g.input} | {i.name for i in g.initializer}
    ordered, pending = [], allnodes
    while pending:
        rest = []
        for n in pending:
            if all(i in ready or i == "" for i in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ValueError(f"cannot order the reference graph (cycle or missing input at {rest[0].name})")
        pending = rest
    del g.node[:]
    g.node.extend(ordered)


def plan_differences(plan: dict, found: dict, limit: int = 3) -> list[str]:
    """How the plan found in a file differs from the recorded one (empty: the same)."""
    out = []
    for name, q in plan.items():
        f = found.get(name)
        if f is None:
            out.append(f"{name} ({q['kind']}) is not quantized in the file")
        elif len(f["scale"]) != len(q["scale"]):
            out.append(f"{name}: {len(f['scale'])} scale(s) where the plan has {len(q['scale'])}"
                       + (" (per-tensor where per-channel was planned)" if len(f["scale"]) == 1 else ""))
        elif not np.allclose(f["scale"], q["scale"], rtol=1e-6, atol=0):
            i = int(np.argmax(np.abs(np.asarray(f["scale"]) / np.asarray(q["scale"]) - 1)))
            out.append(f"{name}: scale {f['scale'][i]:.6g} where the plan has {q['scale'][i]:.6g}")
        elif f["zero_point"] != q["zero_point"] or f["dtype"] != q["dtype"] or f["axis"] != q["axis"]:
            out.append(f"{name}: zero point {f['zero_point'][:3]} {f['dtype']} axis {f['axis']} where the plan has "
                       f"{q['zero_point'][:3]} {q['dtype']} axis {q['axis']}")
        if len(out) >= limit:
            break
    extra = sorted(set(found) - set(plan))
    if extra and len(out) < limit:
        out.append(f"{extra[0]} is quantized in the file but not in the plan")
    return out


def output_steps(plan: dict, proto: onnx.ModelProto) -> dict[str, float]:
    """Per graph output, the quantization step it is measured in: its own where it is quantized, else that of the
    nearest quantized tensor upstream of it (1.0 where none is)."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    steps = {}
    for out in proto.graph.output:
        frontier, seen = [out.name], set()
        step = None
        while frontier and step is None:
            t = frontier.pop(0)
            if t in seen:
                continue
            seen.add(t)
            q = plan.get(t)
            if q is not None and q["kind"] == "activation":
                step = q["scale"][0]
                break
            n = producer.get(t)
            if n is not None:
                frontier += [i for i in n.input if i]
        steps[out.name] = float(step) if step is not None else 1.0
    return steps


def quantized_checks(name: str, int8_runner, fp32: Path, plan: dict, x: np.ndarray, gate) -> list[Check]:
    """The INT8 artifact judged three ways (`gate`: a validation Gate; its atol/rtol/atol_scale and int8_steps):

    - plan: its Q/DQ nodes are the recorded plan (structure, by name);
    - export: its meaning is the FP32 export under that plan: the file run with Q/DQ as float ops equals the
      fake-quantized reference element by element, within the FP32 tolerances (exact on correct files);
    - kernels: the runtime's integer kernels compute that meaning up to requantization rounding: the mean
      difference is at most `int8_steps` quantization steps of each output. Every requantizing op may round
      one step the other way and deep nets add those steps up (a random YOLOv8n: mean 0.3, p99 7, max 20
      steps), so the mean is judged and the max and p99 are reported."""
    from ..quantize.plan import read_plan

    path = Path(int8_runner.path)  # an engine (model.int8.plan) holds the plan of the ONNX it was built from
    source = path if path.suffix == ".onnx" else path.with_suffix(".onnx")
    diff = plan_differences(plan, read_plan(source))
    checks = [Check(f"plan:{name}", "quantization", not diff, observed=float(len(plan) - len(diff)),
                    allowed=f"the {len(plan)} recorded tensors", reason="; ".join(diff) or None)]
    with tempfile.TemporaryDirectory() as td:
        ref_path = reference_model(fp32, plan, Path(td) / "reference.onnx")
        with UnoptimisedRunner(ref_path, providers=["CPUExecutionProvider"], name="reference:fake-quantized") as ref:
            want = ref.infer_batched(x)
    with UnoptimisedRunner(source, providers=["CPUExecutionProvider"], name=f"{name}:unfused") as sem:
        meant = sem.infer_batched(x)
        unfused = {**sem.describe(), "qdq": "run as float ops"}
    got = int8_runner.infer_batched(x)
    per_output = output_steps(plan, onnx.load(str(fp32), load_external_data=False))
    for k, r in want.items():
        atol = max(gate.atol, gate.atol_scale * float(np.abs(r).max(initial=0.0)))
        c = compare(r, meant[k], atol=atol, rtol=gate.rtol)
        passed, reason = c.pop("passed"), c.pop("reason", None)
        checks.append(Check(f"export:{name}", k, passed, reason=reason,
                            details={**c, "backend": unfused,
                                     "reference": "fake-quantized FP32 export", "atol": atol, "rtol": gate.rtol}))
        step = per_output.get(k, 1.0)
        d = np.abs(meant[k].astype(np.float64) - got[k].astype(np.float64)).ravel() / step
        mean = float(d.mean()) if d.size else 0.0
        ok = bool(np.isfinite(d).all()) and mean <= gate.int8_steps
        checks.append(Check(f"kernels:{name}", k, ok, observed=mean, allowed=f"<= {gate.int8_steps:g} steps (mean)",
                            reason=None if ok else f"integer kernels differ by {mean:.2f} quantization steps on average "
                                                   f"(max {float(d.max(initial=0.0)):.0f})",
                            details={"backend": int8_runner.describe(), "quant_step": step, "mean_steps": mean,
                                     "p99_steps": float(np.percentile(d, 99)) if d.size else 0.0,
                                     "max_steps": float(d.max(initial=0.0))}))
    return checks


class UnoptimisedRunner(OrtRunner):
    """onnxruntime with graph optimisations off: Quantize/Dequantize run as float ops (fake quantization)."""

    def options(self):
        import onnxruntime as ort

        so = super().options()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return so


def int8_fidelity(name: str, model, x: np.ndarray, fp32_outs: dict, int8_outs: dict, gate, original_outs: dict | None,
                  labels) -> list[Check]:
    """The INT8 model against the FP32 compressed model (the task's agreement, and with labels its accuracy drop)
    and against the original (the task's own fidelity checks), named "int8:<backend>:..." and
    "fidelity-int8:<backend>:..."."""
    import torch

    from ..tasks import task_of
    from .checks import threshold

    task = task_of(model, {k: torch.from_numpy(v[:1]) for k, v in fp32_outs.items()}, torch.from_numpy(x[:1]))
    key = task.columns[0][0]
    fid = task.fidelity(fp32_outs, int8_outs, labels, model=model)
    where = fid.get("output", "outputs")
    out = [threshold(f"int8:{name}:{key}", where, fid[key], gate.min_int8_agreement)]
    drop = next((k for k in ("accuracy_drop", "map_drop", "miou_drop") if k in fid), None)
    if gate.max_int8_accuracy_drop is not None and drop:
        out.append(threshold(f"int8:{name}:{drop}", where, fid[drop], gate.max_int8_accuracy_drop, at_least=False))
    if original_outs is not None:
        fo = task.fidelity(original_outs, int8_outs, labels, model=model)
        out += [threshold(b.check.replace("fidelity:", f"fidelity-int8:{name}:"), b.output, b.observed, b.bound,
                          b.at_least) for b in task.checks(fo, gate)]
    return out


def quantized_reference(folder, record: dict):
    """(the FP32 ONNX file, the plan) a quantized artifact's gate record names, read from its artifact folder."""
    import json

    from ..errors import OTCError

    path = Path(folder) / record["plan"]
    if not path.is_file():
        raise OTCError(f"{path}: the quantization plan of {record.get('reference')}'s INT8 model is missing")
    return Path(folder) / record["reference"], json.loads(path.read_text())["plan"]
