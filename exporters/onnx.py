"""ONNX: export (torch.onnx.export, dynamo or legacy; onnxscript optimizer, strict shape inference, full
checker, stable names `input`/`logits`, external data past 2 GB, atomic write) and the onnxruntime runner.

Token-reduced models take discrete decisions (which tokens merge). The export names those intermediate
tensors `tokens.dest.<block>` and lists them in the model's metadata (`otcompress.decisions`); they are
not graph outputs. The runner can mark them as outputs of its session, as Polygraphy's `--onnx-outputs`
does, which adds no computation, so validation can replay the exported model's own decisions in PyTorch."""

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

from .base import Runner

INPUT, OUTPUT = "input", "logits"
DECISIONS_KEY = "otcompress.decisions"
TWO_GB = 2 * 1024**3


class _WithDecisions(nn.Module):
    """Exports the model's logits plus every reducing block's decision tensor (named, then un-marked)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        from otcompress.tokens.decisions import recording

        with recording() as rec:
            y = self.model(x)
        return (y, *rec.values())


def decision_names(model: nn.Module) -> list[str]:
    from otcompress.tokens.decisions import names

    return names(model)


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, *, opset: int = 18,
                exporter: str = "dynamo", dynamic_batch: bool = False) -> dict:
    path = Path(path)
    model = model.eval()
    dec = decision_names(model)
    outputs = [OUTPUT, *dec]
    module = _WithDecisions(model) if dec else model
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
        if dec:  # decisions stay named intermediate values, listed in the metadata, not outputs
            keep = [o for o in proto.graph.output if o.name == OUTPUT]
            del proto.graph.output[:]
            proto.graph.output.extend(keep)
            proto.metadata_props.add(key=DECISIONS_KEY, value=json.dumps(dec))
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
            "nodes": len(proto.graph.node), "ops": ops, "external_data": external, "decisions": dec}


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
    """Load and check an ONNX file, turning truncation or corruption into a clear error."""
    path = Path(path)
    if not path.is_file():
        raise OTCError(f"{path}: file not found")
    try:
        proto = onnx.load(str(path), load_external_data=load_external_data)
        onnx.checker.check_model(str(path) if not load_external_data else proto)
    except Exception as e:
        raise OTCError(f"{path}: not a valid ONNX model ({type(e).__name__}: {str(e)[:300]})") from None
    return proto


def ort_providers() -> list[str]:
    import onnxruntime as ort

    avail = ort.get_available_providers()
    return [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]


class OrtRunner(Runner):
    """onnxruntime, with the best available providers (TensorRT EP, CUDA EP, CPU); `describe` reports the
    providers the session really uses, since onnxruntime falls back to CPU silently."""

    def __init__(self, path: str | Path, providers: list[str] | None = None, name: str = "onnxruntime"):
        super().__init__()
        self.path = Path(path)
        self.name = name
        self.wanted = providers
        proto = load_checked(self.path, load_external_data=False)  # fail early on a bad file
        self.decisions = json.loads(next((p.value for p in proto.metadata_props if p.key == DECISIONS_KEY), "[]"))
        self.reports_decisions = bool(self.decisions) and not _has_external_data(self.path)
        inp = proto.graph.input[0]
        dims = inp.type.tensor_type.shape.dim
        self.input_name = inp.name
        self.input_shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
        self.input_dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type).name
        self.output_names = [o.name for o in proto.graph.output]
        self.session = None

    def options(self):
        """Session options (a subclass changes them: another optimisation level, threads, ...)."""
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        return so

    def _activate(self):
        import onnxruntime as ort

        so = self.options()
        try:
            if self.reports_decisions:
                proto = onnx.load(str(self.path))
                proto.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.INT64, None)
                                          for n in self.decisions)
                src = proto.SerializeToString()
            else:
                src = str(self.path)
            self.session = ort.InferenceSession(src, so, providers=self.wanted or ort_providers())
        except Exception as e:
            raise OTCError(f"{self.path}: onnxruntime cannot load it ({str(e)[:300]})") from None

    def _deactivate(self):
        self.session = None

    @property
    def providers(self) -> list[str]:
        """The providers the session really uses: onnxruntime falls back to CPU silently."""
        self.activate()
        return self.session.get_providers()

    def _infer(self, x, decisions):
        names = self.output_names + (self.decisions if decisions and self.reports_decisions else [])
        return dict(zip(names, self.session.run(names, {self.input_name: x})))

    def describe(self):
        return {"name": self.name, "file": self.path.name, "providers": self.providers}


def _has_external_data(path: Path) -> bool:
    proto = onnx.load(str(path), load_external_data=False)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
