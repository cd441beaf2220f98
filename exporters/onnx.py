"""ONNX export, the loader half of the ONNX backend (the onnxruntime runner is onnxruntime.py): torch.onnx.export
(dynamo or legacy), onnxscript's optimizer, strict shape inference, the full checker, stable names (`input`;
outputs named by their path in the model's output tree, `logits` for a single tensor), external data past
2 GB, an atomic write.

Taps (otcompress.taps: the discrete decisions of token-reducing blocks) are named intermediate tensors of the
graph, listed in the model's metadata under `otcompress.taps`, not graph outputs; a runner can mark them as
outputs of its session, as Polygraphy's `--onnx-outputs` does, adding no computation."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import onnx
import torch
import torch.nn as nn

from otcompress.errors import OTCError
from otcompress.outputs import Flat, names as output_names
from otcompress.taps import tap_names

INPUT = "input"
TAPS_KEY = "otcompress.taps"
TWO_GB = 2 * 1024**3


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, *, opset: int = 18,
                exporter: str = "dynamo", dynamic_batch: bool = False) -> dict:
    """Export `model` at the shape of `example` to `path` (written atomically) and check it.

    Args:
        opset: ONNX opset (18 keeps LayerNormalization one op).
        exporter: "dynamo" (torch.export; OTPrune's loop stays one Scan) or "legacy" (TorchScript).
        dynamic_batch: a symbolic batch dimension instead of example's.

    Returns: what was written (file, opset, inputs, outputs, nodes, op types, taps).

    Raises:
        OTCError: the exporter failed (its message, shortened).
    """
    path = Path(path)
    model = model.eval()
    taps = tap_names(model, example)
    outs = output_names(model, example)
    outputs = [*outs, *taps]
    module = Flat(model, with_taps=bool(taps)).eval()  # exporters restore the mode they found, recursively
    axes = {n: {0: "batch"} for n in (INPUT, *outputs)} if dynamic_batch else None
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".onnx-") as td:
        raw = Path(td) / "raw.onnx"
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" chatter
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                if exporter == "dynamo":
                    dyn = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
                    torch.onnx.export(module, (example,), str(raw), input_names=[INPUT], output_names=outputs,
                                      opset_version=opset, dynamo=True, dynamic_shapes=dyn, optimize=False,
                                      external_data=True, verbose=False)
                else:
                    torch.onnx.export(module, (example,), str(raw), input_names=[INPUT], output_names=outputs,
                                      opset_version=opset, dynamo=False, dynamic_axes=axes)
        except Exception as e:
            raise OTCError(f"ONNX export ({exporter}, opset {opset}) of {type(model).__name__} failed: "
                           f"{type(e).__name__}: {str(e)[:2000]}") from None
        proto = _optimize(onnx.load(str(raw), load_external_data=True))
        if taps:  # taps stay named intermediate values, listed in the metadata, not outputs
            keep = [o for o in proto.graph.output if o.name in outs]
            del proto.graph.output[:]
            proto.graph.output.extend(keep)
            proto.metadata_props.add(key=TAPS_KEY, value=json.dumps(taps))
        external = _byte_size(proto) >= TWO_GB
        tmp = Path(td) / "final.onnx"
        if external:  # protobuf cannot hold it in one message: shape inference and checks work on the path
            data = path.name + ".data"
            onnx.save_model(proto, str(tmp), save_as_external_data=True, location=data)
            onnx.shape_inference.infer_shapes_path(str(tmp), str(tmp), strict_mode=True)
            onnx.checker.check_model(str(tmp), full_check=True)
            proto = onnx.load(str(tmp), load_external_data=False)
            os.replace(Path(td) / data, path.parent / data)
        else:
            proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
            onnx.checker.check_model(proto, full_check=True)
            onnx.save_model(proto, str(tmp))
        os.replace(tmp, path)
    ops = sorted({n.op_type for n in proto.graph.node})
    return {"file": path.name, "opset": opset, "exporter": exporter, "dynamic_batch": dynamic_batch,
            "inputs": io_specs(proto.graph.input), "outputs": io_specs(proto.graph.output),
            "nodes": len(proto.graph.node), "ops": ops, "external_data": external, "taps": taps}


def _byte_size(proto: onnx.ModelProto) -> int:
    try:
        return proto.ByteSize()
    except Exception:  # over protobuf's limit
        return TWO_GB


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


def load_checked(path: str | Path, load_external_data: bool = True) -> onnx.ModelProto:
    """Load and check an ONNX file. Raises OTCError naming the file where it is missing, truncated or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise OTCError(f"{path}: file not found")
    try:
        proto = onnx.load(str(path), load_external_data=load_external_data)
        onnx.checker.check_model(str(path) if not load_external_data else proto)
    except Exception as e:
        raise OTCError(f"{path}: not a valid ONNX model ({type(e).__name__}: {str(e)[:300]})") from None
    return proto


def has_external_data(path: Path) -> bool:
    proto = onnx.load(str(path), load_external_data=False)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
