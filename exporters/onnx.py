"""ONNX export: torch.onnx.export (dynamo or legacy), full checker, shape inference, onnxscript
optimizer, stable names `input`/`logits`, external data past 2 GB, atomic write."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path

import onnx
import torch
import torch.nn as nn

from otcompress.errors import OTCError

INPUT, OUTPUT = "input", "logits"
TWO_GB = 2 * 1024**3


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, *, opset: int = 18,
                exporter: str = "dynamo", dynamic_batch: bool = False) -> dict:
    path = Path(path)
    model = model.eval()
    axes = {INPUT: {0: "batch"}, OUTPUT: {0: "batch"}} if dynamic_batch else None
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".onnx-") as td:
        raw = Path(td) / "raw.onnx"
        log = io.StringIO()
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" chatter
        try:
            with contextlib.redirect_stdout(log), warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                if exporter == "dynamo":
                    dyn = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
                    torch.onnx.export(model, (example,), str(raw), input_names=[INPUT], output_names=[OUTPUT],
                                      opset_version=opset, dynamo=True, dynamic_shapes=dyn, optimize=False,
                                      external_data=True, verbose=False)
                else:
                    torch.onnx.export(model, (example,), str(raw), input_names=[INPUT], output_names=[OUTPUT],
                                      opset_version=opset, dynamo=False, dynamic_axes=axes)
        except Exception as e:
            raise OTCError(f"ONNX export ({exporter}, opset {opset}) failed: {type(e).__name__}: {str(e)[:2000]}") from None
        proto = onnx.load(str(raw), load_external_data=True)
        proto = _optimize(proto)
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
        size = proto.ByteSize() if proto.ByteSize() < TWO_GB else TWO_GB
        tmp = Path(td) / "final.onnx"
        external = size >= TWO_GB
        if external:
            onnx.save_model(proto, str(tmp), save_as_external_data=True, location=path.name + ".data")
            onnx.checker.check_model(str(tmp), full_check=True)
            os.replace(Path(td) / (path.name + ".data"), path.parent / (path.name + ".data"))
        else:
            onnx.checker.check_model(proto, full_check=True)
            onnx.save_model(proto, str(tmp))
        os.replace(tmp, path)
    ops = sorted({n.op_type for n in proto.graph.node})
    return {"file": path.name, "opset": opset, "exporter": exporter, "dynamic_batch": dynamic_batch,
            "inputs": io_specs(proto.graph.input), "outputs": io_specs(proto.graph.output),
            "nodes": len(proto.graph.node), "ops": ops, "external_data": external}


LARGE_GRAPH = 5000  # nodes; onnxscript's pattern rewriter is quadratic in graph size


def _optimize(proto: onnx.ModelProto) -> onnx.ModelProto:
    """onnxscript's optimizer; on very large graphs (e.g. the legacy exporter unrolls OTPrune's greedy loop
    in every block, where torch.export keeps it as one Scan) only its constant folding and dead-node
    removal, which are linear: the rewrite rules would take minutes."""
    import onnxscript.optimizer

    if len(proto.graph.node) <= LARGE_GRAPH:
        return onnxscript.optimizer.optimize(proto)
    from onnxscript import ir

    model = ir.serde.deserialize_model(proto)
    onnxscript.optimizer.fold_constants(model)
    onnxscript.optimizer.remove_unused_nodes(model)
    return ir.serde.serialize_model(model)


def io_specs(values) -> list[dict]:
    out = []
    for v in values:
        t = v.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
        out.append({"name": v.name, "shape": dims, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name})
    return out


def load_checked(path: str | Path) -> onnx.ModelProto:
    """Load and check an ONNX file, turning truncation or corruption into a clear error."""
    path = Path(path)
    if not path.is_file():
        raise OTCError(f"{path}: file not found")
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except Exception as e:
        raise OTCError(f"{path}: not a valid ONNX model ({type(e).__name__}: {str(e)[:300]})") from None
    return proto
