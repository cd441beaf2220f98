"""Stage `validate`: exported files against the compressed model, the compressed model against the original."""

from ..schema import Field
from ..validation import DEFAULT_TOL, ERROR_STATS, inputs, summary, validate
from .base import Stage


def _backends(v):
    if not all(b in ("onnxruntime", "tensorrt") for b in v):
        return "expected a list drawn from 'onnxruntime', 'tensorrt'"


class Validate(Stage):
    kind = "validate"
    changes_model = False
    fields = {
        "atol": Field((float,), lo=0.0, help="a non-negative number (default 1e-4 fp32, 1e-2 fp16)"),
        "rtol": Field((float,), lo=0.0, help="a non-negative number (default 1e-3 fp32, 1e-2 fp16)"),
        "error_stat": Field((str,), default="elemwise", choices=ERROR_STATS,
                            help="Polygraphy's check_error_stat: elemwise, max, mean or median (median for ToMe/PiToMe)"),
        "samples": Field((int,), default=64, lo=1, help="a positive integer"),
        "seed": Field((int,), default=0),
        "min_top1_agreement": Field((float,), default=0.9, lo=0.0, hi=1.0),
        "max_accuracy_drop": Field((float,), lo=0.0, hi=1.0),
        "backends": Field((list,), check=_backends, help="a list drawn from 'onnxruntime', 'tensorrt' (default: all exported)"),
    }

    def apply(self, ctx, params):
        from otcompress.exporters.runners import OrtRunner, TorchRunner

        d = ctx.recipe.data or {}
        samples = min(params["samples"], d.get("limit") or params["samples"])  # [data].limit caps evaluation
        x, y, source = inputs(d.get("eval"), d.get("mean"), d.get("std"), samples, params["seed"], ctx.input_shape)
        prec = ctx.meta.get("tensorrt_precision", "fp32")
        atol = params["atol"] if params["atol"] is not None else DEFAULT_TOL[prec][0]
        rtol = params["rtol"] if params["rtol"] is not None else DEFAULT_TOL[prec][1]
        wanted = params["backends"] or ["onnxruntime", "tensorrt"]
        backends = []
        if "onnxruntime" in wanted and "onnx" in ctx.files:
            backends.append(OrtRunner(ctx.out / ctx.files["onnx"]))
        if "tensorrt" in wanted and "tensorrt" in ctx.files:
            from otcompress.exporters.tensorrt import TrtRunner

            backends.append(TrtRunner(ctx.out / ctx.files["tensorrt"]))
        shape = ctx.input_shape
        res = validate(TorchRunner(ctx.model, "pytorch:compressed", input_shape=shape), backends, x,
                       original=TorchRunner(ctx.original, "pytorch:original", input_shape=shape), labels=y,
                       atol=atol, rtol=rtol, error_stat=params["error_stat"], min_top1_agreement=params["min_top1_agreement"],
                       max_accuracy_drop=params["max_accuracy_drop"], input_source=source)
        res["seed"] = params["seed"]
        ctx.validation = res
        ctx.meta["validate"] = {"atol": atol, "rtol": rtol, "error_stat": params["error_stat"], "min_top1_agreement": params["min_top1_agreement"],
                                "max_accuracy_drop": params["max_accuracy_drop"], "samples": params["samples"],
                                "seed": params["seed"]}
        print(summary(res))
        return {"passed": res["passed"], "checks": len(res["checks"])}
