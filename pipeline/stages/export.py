"""Stages `export_onnx` and `export_tensorrt`."""

from ..schema import Field
from .base import Stage


class ExportONNX(Stage):
    kind = "export_onnx"
    changes_model = False
    fields = {
        "opset": Field((int,), default=18, lo=13, hi=23, help="an ONNX opset between 13 and 23"),
        "exporter": Field((str,), default="dynamo", choices=("dynamo", "legacy")),
        "dynamic_batch": Field((bool,), default=False),
    }

    def apply(self, ctx, params):
        from otcompress.exporters.onnx import export_onnx

        info = export_onnx(ctx.model, ctx.example, ctx.out / "model.onnx", opset=params["opset"],
                           exporter=params["exporter"], dynamic_batch=params["dynamic_batch"])
        ctx.files["onnx"] = "model.onnx"
        return info


class ExportTensorRT(Stage):
    kind = "export_tensorrt"
    changes_model = False
    fields = {
        "precision": Field((str,), default="fp32", choices=("fp32", "fp16")),
        "workspace_gb": Field((float,), default=4.0, lo=0.0625, help="a positive number of GiB"),
        "dynamic_batch": Field((bool,), default=False),
        "optional": Field((bool,), default=False, help="true to skip (not fail) where TensorRT is not installed"),
    }

    def apply(self, ctx, params):
        from otcompress.errors import OTCError
        from otcompress.exporters.tensorrt import TensorRTUnavailable, build_engine

        if "onnx" not in ctx.files:
            raise OTCError("export_tensorrt needs an export_onnx stage before it")
        try:
            info = build_engine(ctx.out / "model.onnx", ctx.out / "model.plan", precision=params["precision"],
                                workspace_gb=params["workspace_gb"], dynamic_batch=params["dynamic_batch"])
        except TensorRTUnavailable as e:
            if params["optional"]:
                return {"skipped": True, "reason": str(e)}
            raise
        ctx.files["tensorrt"] = "model.plan"
        ctx.meta["tensorrt_precision"] = params["precision"]
        return info
