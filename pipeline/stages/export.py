"""Stages `export_onnx` and `export_tensorrt`."""

from ..context import Export
from ..recipe.schema import Field
from .base import Stage


class ExportONNX(Stage):
    kind = "export_onnx"
    changes_model = False
    fields = {
        "opset": Field((int,), default=18, lo=13, hi=23, help="an ONNX opset between 13 and 23"),
        "exporter": Field((str,), default="dynamo", choices=("dynamo", "legacy")),
        "dynamic_batch": Field((bool,), default=False),
    }

    def provides(self, params):
        return {"onnx"}

    def apply(self, ctx, params):
        from otcompress.exporters.onnx import export_onnx

        path = ctx.out / "model.onnx"
        info = export_onnx(ctx.model, ctx.example, path, opset=params["opset"], exporter=params["exporter"],
                           dynamic_batch=params["dynamic_batch"])
        ctx.exports[path.name] = Export(path, dynamic_batch=params["dynamic_batch"])
        return info


class ExportTensorRT(Stage):
    kind = "export_tensorrt"
    changes_model = False
    fields = {
        "precision": Field((str,), default="fp32", choices=("fp32", "fp16", "int8"),
                           help="fp32, fp16, or int8: built from the quantize stage's model.int8.onnx"),
        "workspace_gb": Field((float,), default=4.0, lo=0.0625, help="a positive number of GiB"),
        "dynamic_batch": Field((bool,), help="true or false; must agree with export_onnx's (the engine's batch "
                                             "dimension follows the ONNX model's; default: the same)"),
        "optional": Field((bool,), default=False, help="true to skip (not fail) where TensorRT is not installed"),
    }

    def needs(self, params):
        if params["precision"] == "int8":
            return {"int8": "precision = 'int8' builds the engine from the quantized model.int8.onnx"}
        return {"onnx": "TensorRT builds its engine from the ONNX model"}

    def provides(self, params):
        return {"tensorrt-int8" if params["precision"] == "int8" else "tensorrt"}

    def check(self, params, model, data, facts):
        onnx_dyn = (facts.get("onnx") or {}).get("dynamic_batch", False)
        if params["dynamic_batch"] is not None and params["dynamic_batch"] != onnx_dyn:
            return [f"dynamic_batch = {str(params['dynamic_batch']).lower()} disagrees with the export_onnx stage's "
                    f"dynamic_batch = {str(onnx_dyn).lower()}: the engine follows the ONNX model's batch dimension"]
        return []

    def apply(self, ctx, params):
        from otcompress.exporters.tensorrt import TensorRTUnavailable, build_engine

        source = ctx.exports["model.int8.onnx" if params["precision"] == "int8" else "model.onnx"]
        path = source.path.with_suffix(".plan")  # model.plan, or model.int8.plan (validated as the INT8 model is)
        try:
            info = build_engine(source.path, path, precision=params["precision"], workspace_gb=params["workspace_gb"])
        except TensorRTUnavailable as e:
            if params["optional"]:
                return {"skipped": True, "reason": str(e)}
            raise
        ctx.exports[path.name] = Export(path, precision=info["precision"], dynamic_batch=info["dynamic_batch"],
                                        gate=source.gate)
        return info
