"""Stage `quantize`: static INT8 of the exported model into model.int8.onnx (Q/DQ), calibrated on the recipe's
calibration images (the loader `repair` uses), the setting chosen as the target asks (otcompress.quantize),
sensitive ops and the model family's exclusions in float, the fallback returning layers to float until the
INT8 model agrees with the FP32 one. quantization.json records the settings, the plan (every scale and zero
point) and what stayed float and why; the validate stage and `otcompress validate` judge the INT8 file by it."""

from __future__ import annotations

import shutil

from ..quantize.settings import CALIBRATIONS, DEFAULTS, SCHEMES, TARGETS
from ..recipe.schema import Field
from .base import Stage

ARTIFACT, PLAN = "model.int8.onnx", "quantization.json"


def _patterns(v):
    if not all(isinstance(p, str) for p in v):
        return "expected a list of node-name or module-name patterns such as [\"model.22.*\"]"


class Quantize(Stage):
    kind = "quantize"
    changes_model = False
    fields = {
        "target": Field((str,), default=DEFAULTS["target"], choices=TARGETS,
                        help="'auto' (the fastest setting on this machine's onnxruntime among those that agree), "
                             "'fixed' (the settings below), or 'tensorrt' (symmetric int8, per-channel)"),
        "calibration": Field((str,), default=DEFAULTS["calibration"], choices=CALIBRATIONS),
        "scheme": Field((str,), default=DEFAULTS["scheme"], choices=SCHEMES,
                        help="'u8s8' (uint8 activations, int8 weights) or 's8s8' (int8 both, symmetric)"),
        "per_channel": Field((bool,), default=DEFAULTS["per_channel"]),
        "reduce_range": Field((bool,), default=DEFAULTS["reduce_range"], help="7-bit weights (for CPUs without VNNI)"),
        "samples": Field((int,), default=DEFAULTS["samples"], lo=16, help="calibration images (a quarter is held out to score)"),
        "seed": Field((int,), default=DEFAULTS["seed"]),
        "min_agreement": Field((float,), default=DEFAULTS["min_agreement"], lo=0.0, hi=1.0,
                               help="the INT8 model's agreement with the FP32 one on held-out calibration images"),
        "fallback": Field((bool,), default=True, help="return the most sensitive layers to float until it agrees"),
        "max_float": Field((int,), default=DEFAULTS["max_float"], lo=0, help="layers the fallback may return to float"),
        "exclude": Field((list,), default=[], check=_patterns, help="nodes or modules kept in float (patterns)"),
        "bias_correction": Field((bool,), default=DEFAULTS["bias_correction"],
                                 help="correct the int32 biases for the mean shift quantization causes, on the "
                                      "calibration images"),
    }

    def needs(self, params):
        return {"onnx": "it quantizes the exported ONNX model", "data.calib": "it calibrates on unlabeled images"}

    def provides(self, params):
        return {"int8"}

    def conflicts(self, params):
        return {"int8"}

    def apply(self, ctx, params):
        import onnx

        from ..artifacts import atomic_write_json
        from ..context import Export
        from ..quantize.build import float_by_rule, module_of
        from ..quantize.plan import add_shifts, check_plan, read_plan
        from ..quantize.search import choose
        from ..quantize.settings import SCHEMES, Settings

        fp32 = ctx.exports["model.onnx"].path
        x = ctx.calibration(params["samples"], params["seed"]).numpy()
        held, calib = x[::4], x[[i for i in range(len(x)) if i % 4]]
        exclude = {**self.family_exclusions(ctx), **{p: f"excluded by the stage's exclude pattern {p!r}" for p in params["exclude"]}}
        proto = onnx.load(str(fp32), load_external_data=False)
        modules = {n.name: module_of(n) for n in proto.graph.node}
        floats = float_by_rule(proto, exclude)
        given = Settings(params["calibration"], params["scheme"], params["per_channel"], params["reduce_range"])
        score = agreement_score(ctx)
        lines = []
        say = (lambda m: (print(m, flush=True), lines.append(m))) if ctx.progress else lines.append
        work = ctx.out / ".quantize"
        try:
            choice = choose(fp32, work, calib, held, given, TARGETS[params["target"]], floats, score,
                            params["min_agreement"], params["max_float"], params["fallback"], say,
                            params["bias_correction"])
            out = ctx.out / ARTIFACT
            shutil.copyfile(choice.quantized.path, out)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        s = choice.quantized.settings
        plan = read_plan(out)
        check_plan(plan, s.per_channel, SCHEMES[s.scheme])
        add_shifts(plan, choice.quantized.bias_shift)
        record = {"settings": s.as_dict(), "label": s.label, "target": params["target"], "agreement": choice.agreement,
                  "min_agreement": params["min_agreement"], "held_out": len(held), "calibration_images": len(calib),
                  "float": [{"node": n, "module": modules.get(n, ""), "why": w}
                            for n, w in choice.quantized.float_nodes.items()],
                  "candidates": choice.candidates, "fallback": choice.fallback,
                  "bias_corrected": len(choice.quantized.bias_shift)}
        atomic_write_json(ctx.out / PLAN, {**record, "reference": fp32.name, "plan": plan})
        ctx.quantization = record
        ctx.exports[ARTIFACT] = Export(out, precision="int8", gate={"kind": "int8", "plan": PLAN, "reference": fp32.name})
        return {**record, "plan_tensors": len(plan), "file": out.name, "bytes": out.stat().st_size,
                "fp32_bytes": fp32.stat().st_size, "log": lines}

    @staticmethod
    def family_exclusions(ctx) -> dict[str, str]:
        """What the model family keeps in float (a `quantization_exclusions()` method of the adapted model)."""
        fn = getattr(ctx.model, "quantization_exclusions", None)
        return dict(fn()) if callable(fn) else {}


def agreement_score(ctx):
    """score(fp32_outputs, int8_outputs): the task's agreement (top-1 agreement, mAP against the FP32 detections,
    pixel agreement) of the INT8 model with the FP32 one."""
    import torch

    from ..outputs import flatten
    from ..tasks import task_of

    with torch.no_grad():
        outs = flatten(ctx.model(ctx.example))
    task = task_of(ctx.model, outs, ctx.example)
    key = task.columns[0][0]

    def score(want, got):
        fid = task.fidelity(want, got, None, model=ctx.model)
        v = fid.get(key)
        return 1.0 - min(1.0, v) if key == "rel_l2_error" else v

    return score
