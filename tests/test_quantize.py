"""INT8: the quantize stage end to end on the quickstart's digits CNN (target auto and fixed), the INT8 gate
(plan, fake-quantized reference within a few output steps, agreement with the FP32 model) passing the correct
export and failing each wrong one (an activation scale off by 2x, a zero point shifted, per-tensor weights
where the plan has per-channel ones, a residual add left unquantized), and the automatic fallback returning the
sensitive layer to float; the integer-kernel check fails kernels that drift from the file's meaning."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from .conftest import QUICKSTART, run_cli

QUANTIZE = '[[stages]]\nkind = "quantize"\nsamples = 128\n{extra}\n[[stages]]\nkind = "validate"\n'


def _recipe(tmp_path, extra="", validate_keys=""):
    shutil.copytree(QUICKSTART.parent, tmp_path / "recipes")
    text = (tmp_path / "recipes" / "quickstart.toml").read_text()
    text = text.replace('[[stages]]\nkind = "validate"', QUANTIZE.format(extra=extra).rstrip() + validate_keys)
    p = tmp_path / "recipes" / "q.toml"
    p.write_text(text)
    return p


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("int8")
    p = _recipe(tmp, extra='[[stages]]\nkind = "export_tensorrt"\nprecision = "int8"\noptional = true')
    res = run_cli("run", p, "--out", tmp / "out", "--quiet")
    assert res.exit_code == 0, res.output
    return tmp / "out"


def test_quantize_stage_writes_a_validated_int8_model_and_its_plan(int8_run):
    rep = json.loads((int8_run / "report.json").read_text())
    checks = {c["check"]: c for c in rep["validation"]["checks"]}
    assert checks["plan:onnxruntime-int8"]["passed"] and checks["export:onnxruntime-int8"]["passed"]
    assert checks["export:onnxruntime-int8"]["max_abs"] <= 1e-5  # the file's meaning is the fake-quantized reference
    k = checks["kernels:onnxruntime-int8"]
    assert k["passed"] and k["mean_steps"] <= 0.5 and k["max_steps"] <= 2  # integer kernels: requantization rounding
    assert checks["int8:onnxruntime-int8:top1_agreement"]["observed"] >= 0.98
    q = rep["quantization"]
    assert len(q["candidates"]) == 8 and q["settings"] in [c["settings"] for c in q["candidates"]]
    assert all(c["speedup_vs_fp32"] > 0 for c in q["candidates"])  # target auto measured every candidate
    from otcompress.quantize.search import pick

    chosen = pick(q["candidates"], q["min_agreement"])
    assert q["candidates"][chosen]["settings"] == q["settings"]
    for c in q["candidates"]:  # one left unscored could not have won with any score: the same choice as scoring all
        if c["agreement"] is None:
            assert c["skipped"]
            assert pick([{**d, "agreement": 1.0, "output_error": 0.0} if d is c else d for d in q["candidates"]],
                        q["min_agreement"]) == chosen
    assert "| candidate | agreement |" in (int8_run / "report.md").read_text()
    assert "model.int8.onnx" in rep["files"] and "quantization.json" in rep["files"]
    ops = {n.op_type for n in onnx.load(str(int8_run / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    res = run_cli("validate", int8_run)
    assert res.exit_code == 0 and "plan:onnxruntime-int8" in res.output, res.output
    trt = next(s for s in rep["stages"] if s["kind"] == "export_tensorrt")
    try:
        import tensorrt  # noqa: F401
    except Exception:  # the INT8 engine is built from model.int8.onnx where TensorRT is installed; here it says why not
        assert trt["details"]["skipped"] and "tensorrt" in trt["details"]["reason"]


def test_an_int8_engine_without_a_quantize_stage_is_refused_naming_it(tmp_path):
    shutil.copytree(QUICKSTART.parent, tmp_path / "recipes")
    p = tmp_path / "recipes" / "quickstart.toml"
    p.write_text(p.read_text().replace('[[stages]]\nkind = "validate"',
                                       '[[stages]]\nkind = "export_tensorrt"\nprecision = "int8"\n\n[[stages]]\nkind = "validate"'))
    res = run_cli("run", p, "--out", tmp_path / "out")
    assert res.exit_code == 2 and "quantize stage" in res.output and not (tmp_path / "out").exists(), res.output


def _tamper(folder, tmp_path, edit):
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    proto = onnx.load(str(bad / "model.int8.onnx"))
    edit(proto)
    onnx.save(proto, str(bad / "model.int8.onnx"))
    return bad


def _first_activation_q(proto):
    inits = {i.name for i in proto.graph.initializer}
    return next(n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits
                and n.input[0] != "input")


def _set(proto, name, fn):
    init = next(i for i in proto.graph.initializer if i.name == name)
    init.CopyFrom(numpy_helper.from_array(fn(numpy_helper.to_array(init)), name))


def test_the_int8_gate_fails_a_scale_off_by_two_and_a_shifted_zero_point(int8_run, tmp_path):
    def scale(proto):
        q = _first_activation_q(proto)
        _set(proto, q.input[1], lambda s: (s * 2).astype(s.dtype))  # the Q and its DQ share the initializer

    def zero(proto):
        q = _first_activation_q(proto)
        _set(proto, q.input[2], lambda z: (z.astype(np.int32) + 3).astype(z.dtype))

    for name, edit in (("scale x2", scale), ("zero point + 3", zero)):
        res = run_cli("validate", _tamper(int8_run, tmp_path / name.replace(" ", "_"), edit))
        assert res.exit_code == 1, (name, res.output)
        assert "FAIL plan:onnxruntime-int8" in res.output, (name, res.output)


def test_the_int8_gate_fails_per_tensor_weights_and_an_unquantized_residual_add(int8_run, tmp_path):
    """Files quantized otherwise (onnxruntime itself: per-tensor weights; the residual add excluded) put in place of
    the planned one: each fails its plan check by name."""
    from otcompress.quantize.build import quantize_model
    from otcompress.quantize.settings import Settings

    plan = json.loads((int8_run / "quantization.json").read_text())
    s = Settings(**plan["settings"])
    x = np.random.default_rng(0).standard_normal((64, 1, 8, 8)).astype(np.float32)
    fp32 = int8_run / "model.onnx"
    adds = [n.name for n in onnx.load(str(fp32)).graph.node if n.op_type == "Add"]
    assert adds  # the digits CNN's residual adds
    variants = {"per-tensor weights": (Settings(s.calibration, s.scheme, not s.per_channel, s.reduce_range), {}),
                "residual add unquantized": (s, {adds[0]: "test"})}
    for name, (settings, floats) in variants.items():
        bad = tmp_path / name.replace(" ", "_")
        shutil.copytree(int8_run, bad)
        quantize_model(fp32, bad / "model.int8.onnx", x, settings, {**{f["node"]: f["why"] for f in plan["float"]}, **floats},
                       tmp_path / "ranges", bias_correction=False)
        res = run_cli("validate", bad)
        assert res.exit_code == 1 and "FAIL plan:onnxruntime-int8" in res.output, (name, res.output)


def _outlier(tmp_path):
    """One output channel of the digits CNN's conv4 made 1000x larger: per-tensor weights there round every
    other channel of that layer to zero, so that layer is by far the most sensitive."""
    from safetensors.torch import load_file, save_file

    ckpt = tmp_path / "recipes" / "data" / "digits_cnn.safetensors"
    sd = load_file(str(ckpt))
    sd["conv4.weight"][0] *= 1000.0
    save_file(sd, str(ckpt))


def test_the_fallback_returns_the_sensitive_layer_to_float(tmp_path):
    p = _recipe(tmp_path, extra='target = "fixed"\nper_channel = false\nmin_agreement = 0.995')
    _outlier(tmp_path)
    res = run_cli("run", p, "--out", tmp_path / "out", "--quiet")
    assert res.exit_code == 0, res.output
    q = json.loads((tmp_path / "out" / "quantization.json").read_text())
    assert q["fallback"] and q["agreement"] >= 0.995
    assert any("fallback" in f["why"] and f["module"] == "conv4" for f in q["float"]), q["float"]


def test_auto_takes_the_most_faithful_of_the_level_fastest_that_agree():
    from otcompress.quantize.search import SPEED_BAND, pick

    def row(agreement, error, speed):
        return {"agreement": agreement, "output_error": error, "speedup_vs_fp32": speed}

    level = 1.8 * (1 - SPEED_BAND / 2)  # within the band of the fastest: timing cannot rank it below
    rows = [row(0.99, 3e-3, 1.8), row(1.0, 1e-3, level), row(0.97, 1e-4, 2.5)]  # the last does not agree
    assert pick(rows, 0.98) == 1
    rows[1]["speedup_vs_fp32"] = 1.8 * (1 - 2 * SPEED_BAND)  # clearly slower: speed decides
    assert pick(rows, 0.98) == 0
    assert pick([row(0.9, 1e-2, 2.0), row(0.95, 2e-2, 1.0), row(0.95, 1e-2, 1.0)], 0.98) == 2  # none agrees: closest
    assert pick([row(1.0, 2e-3, None), row(1.0, 1e-3, None)], 0.98) == 1  # speed not measured: error decides
    assert pick([row(None, None, 2.0), row(0.99, 1e-3, 1.0)], 0.98) == 1  # a candidate left unscored is never taken


def test_an_int8_model_that_cannot_agree_is_refused_with_what_to_do(tmp_path):
    p = _recipe(tmp_path, extra='target = "fixed"\nper_channel = false\nmin_agreement = 0.995\nmax_float = 0')
    _outlier(tmp_path)
    res = run_cli("run", p, "--out", tmp_path / "out")
    assert res.exit_code == 2 and "max_float" in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "out").exists()


def test_bench_and_sweep_show_the_int8_model_beside_fp32(int8_run, tmp_path):
    res = run_cli("bench", int8_run, "--batch", "1", "--runs", "3")
    assert res.exit_code == 0, res.output
    b = json.loads((int8_run / "bench.json").read_text())
    int8 = [r for r in b["rows"] if r["model"] == "compressed-int8"]
    assert len(int8) == 1 and int8[0]["median_ms"] > 0 and "speedup" in int8[0]
    assert 0 < b["file_bytes"]["model.int8.onnx"] < b["file_bytes"]["model.onnx"]
    p = _recipe(tmp_path, extra='target = "fixed"')
    res = run_cli("sweep", p, "--flops", "0.6", "--out", tmp_path / "sw", "--runs", "3")
    assert res.exit_code == 0, res.output
    point = json.loads((tmp_path / "sw" / "sweep.json").read_text())["points"][0]
    assert point["int8"]["latency_ms"] > 0 and point["int8"]["agreement"] >= 0.98
    assert "INT8 latency" in (tmp_path / "sw" / "sweep.md").read_text()


def test_the_kernel_check_fails_integer_results_a_few_steps_off(int8_run):
    """The kernels check on its own: the runtime's results shifted by 2 quantization steps of each output fail it
    (mean 2 > 1), its own results pass."""
    from otcompress.exporters.onnxruntime import OrtRunner
    from otcompress.validation.gate import Gate
    from otcompress.validation.quantized import output_steps, quantized_checks

    plan = json.loads((int8_run / "quantization.json").read_text())["plan"]
    steps = output_steps(plan, onnx.load(str(int8_run / "model.onnx")))
    x = np.random.default_rng(1).standard_normal((16, 1, 8, 8)).astype(np.float32)

    class Drifting(OrtRunner):
        def _infer(self, x, taps):
            return {k: v + 2 * steps[k] for k, v in super()._infer(x, taps).items()}

    for runner, ok in ((OrtRunner(int8_run / "model.int8.onnx"), True), (Drifting(int8_run / "model.int8.onnx"), False)):
        with runner:
            kernels = [c for c in quantized_checks("t", runner, int8_run / "model.onnx", plan, x, Gate())
                       if c.check == "kernels:t"]
        assert kernels and all(bool(c) == ok for c in kernels), [c.as_dict() for c in kernels]


def test_a_token_reduced_vit_quantizes_with_its_sensitive_ops_in_float(tmp_path):
    """INT8 for a ViT with ToMe: Softmax and LayerNorm stay float (by op type), only weight MatMuls are quantized
    (the attention and merge products stay float), and the INT8 gate passes the file."""
    rng = np.random.default_rng(0)
    for f, n in (("calib.npz", 64), ("eval.npz", 16)):
        np.savez(tmp_path / f, x=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), y=rng.integers(0, 10, n))
    p = tmp_path / "vit.toml"
    p.write_text('name = "vit-int8"\n[model]\narch = "vit"\nargs = {img_size = 32, patch_size = 4, embed_dim = 48, depth = 2, '
                 'num_heads = 3, num_classes = 10}\ninput_shape = [1, 3, 32, 32]\n[data]\ncalib = "calib.npz"\n'
                 'eval = "eval.npz"\n[[stages]]\nkind = "tokens"\nmethod = "tome"\nkeep = 0.9\n[[stages]]\n'
                 'kind = "export_onnx"\n[[stages]]\nkind = "quantize"\ntarget = "fixed"\nsamples = 32\nmin_agreement = 0.0\n'
                 '[[stages]]\nkind = "validate"\nsamples = 16\nmin_top1_agreement = 0.0\nmin_int8_agreement = 0.0\n')
    res = run_cli("run", p, "--out", tmp_path / "out", "--quiet")
    assert res.exit_code == 0, res.output
    q = json.loads((tmp_path / "out" / "quantization.json").read_text())
    kept = {f["why"].split(":")[0] for f in q["float"]}
    assert {"LayerNormalization", "MatMul of two activations (attention scores, token similarity)"} <= kept, q["float"]
    fp32 = onnx.load(str(tmp_path / "out" / "model.onnx"))
    inits = {i.name for i in fp32.graph.initializer}
    products = {n.name for n in fp32.graph.node if n.op_type == "MatMul" and not any(i in inits for i in n.input)}
    assert products and products <= {f["node"] for f in q["float"]}  # attention scores and the merges' products
    weights = {n.input[1] for n in fp32.graph.node if n.op_type == "MatMul" and n.input[1] in inits}
    assert weights and weights <= {k for k, v in q["plan"].items() if v["kind"] == "weight"}  # the linears are INT8


def test_relu_folds_into_a_u8_range_and_stays_between_s8_pairs(int8_run, tmp_path):
    """With u8 activations a ReLU is the bottom of the next Q's grid (zero point 0): onnxruntime removes it rather
    than leave DQ -> Relu -> Q in float, and the file still means the FP32 model under its plan (export check,
    against a reference that keeps the ReLU). With symmetric s8 activations the ReLU stays, Q/DQ on both sides."""
    from otcompress.exporters.onnxruntime import OrtRunner
    from otcompress.quantize.build import quantize_model
    from otcompress.quantize.plan import read_plan
    from otcompress.quantize.settings import Settings
    from otcompress.validation.gate import Gate
    from otcompress.validation.quantized import quantized_checks

    fp32 = int8_run / "model.onnx"
    relus = [n.output[0] for n in onnx.load(str(fp32)).graph.node if n.op_type == "Relu"]
    assert relus
    x = np.random.default_rng(0).standard_normal((64, 1, 8, 8)).astype(np.float32)
    for scheme in ("u8s8", "s8s8"):
        out = tmp_path / f"{scheme}.onnx"
        quantize_model(fp32, out, x, Settings("minmax", scheme, True, False), {}, tmp_path / f"ranges-{scheme}", False)
        g = onnx.load(str(out)).graph
        producer = {o: n.op_type for n in g.node for o in n.output}
        left = [n for n in g.node if n.op_type == "Relu"]
        plan = read_plan(out)
        if scheme == "u8s8":
            assert not left and all(plan[r]["zero_point"] == [0] for r in relus if r in plan), [n.name for n in left]
        else:
            assert len(left) == len(relus) and all(producer[n.input[0]] == "DequantizeLinear" for n in left)
        with OrtRunner(out) as runner:
            export = [c for c in quantized_checks("t", runner, fp32, plan, x[:16], Gate()) if c.check == "export:t"]
        assert export and all(export), [c.as_dict() for c in export]


def test_bias_correction_brings_channel_means_to_fp32_and_the_gate_holds_the_file_to_its_shifts(int8_run, tmp_path):
    """Each weighted op's int32 bias corrected in graph order leaves the INT8 model's per-channel output means
    closer to the FP32 model's than without it; the shifts are in the plan, so the reference matches the file, and
    a bias moved in the file without a recorded shift fails the gate."""
    from otcompress.quantize.bias import _biased, _channel_means, correct_bias
    from otcompress.quantize.build import quantize_model
    from otcompress.quantize.settings import Settings

    plan = json.loads((int8_run / "quantization.json").read_text())
    assert plan["bias_corrected"] > 0 and any("shift" in q for q in plan["plan"].values() if q["kind"] == "bias")
    fp32 = int8_run / "model.onnx"
    x = np.random.default_rng(0).standard_normal((128, 1, 8, 8)).astype(np.float32)
    plain, fixed = tmp_path / "plain.onnx", tmp_path / "fixed.onnx"
    quantize_model(fp32, plain, x, Settings("minmax", "u8s8", True, True), {}, tmp_path / "ranges", False)
    shutil.copyfile(plain, fixed)
    shifts = correct_bias(fp32, fixed, x)
    assert shifts
    ref = {n.name: n.output[0] for n in onnx.load(str(fp32)).graph.node}

    def error(path):
        pairs = _biased(onnx.load(str(path)))
        want = _channel_means(onnx.load(str(fp32)), [ref[k] for k in pairs], x)
        got = _channel_means(onnx.load(str(path)), [n.output[0] for n, _ in pairs.values()], x)
        return sum(float(np.abs(want[ref[k]] - got[n.output[0]]).mean()) for k, (n, _) in pairs.items())

    assert error(fixed) < 0.5 * error(plain)

    def moved(proto):  # the first corrected bias shifted by 1000 steps, the plan left as it was
        dq = next(dq for _, dq in _biased(proto).values())
        _set(proto, dq.input[0], lambda q: (q.astype(np.int64) + 1000).astype(np.int32))

    res = run_cli("validate", _tamper(int8_run, tmp_path / "moved", moved))
    assert res.exit_code == 1 and "FAIL export:onnxruntime-int8" in res.output, res.output
