"""The onnxruntime runner, the running half of the ONNX backend (export and checks are onnx.py)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from otcompress.errors import OTCError

from .base import Runner
from .onnx import TAPS_KEY, has_external_data, load_checked


def ort_providers() -> list[str]:
    """The best providers installed, best first (TensorRT EP, CUDA EP, CPU)."""
    import onnxruntime as ort

    avail = ort.get_available_providers()
    return [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]


class OrtRunner(Runner):
    """onnxruntime with the best available providers; `describe` reports the providers the session really
    uses, since onnxruntime falls back to CPU silently.

    Args:
        path: an .onnx file (checked when the runner is made: a bad file fails early, naming it).
        providers: the providers to ask for (default: `ort_providers()`).
        name: the backend name used in check names ("export:<name>").
        threads: intra-op threads (default: onnxruntime's own choice).

    Override point: `options()` returns the SessionOptions (a subclass changes optimisation level, threads).
    """

    def __init__(self, path: str | Path, providers: list[str] | None = None, name: str = "onnxruntime",
                 threads: int | None = None):
        super().__init__()
        self.path = Path(path)
        self.name = name
        self.wanted = providers
        self.threads = threads
        proto = load_checked(self.path, load_external_data=False)  # fail early on a bad file
        self.tap_names = json.loads(next((p.value for p in proto.metadata_props if p.key == TAPS_KEY), "[]"))
        self.reports_taps = bool(self.tap_names) and not has_external_data(self.path)
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
        if self.threads:
            so.intra_op_num_threads = self.threads
        return so

    def _activate(self):
        import onnxruntime as ort

        so = self.options()
        try:
            if self.reports_taps:
                proto = onnx.load(str(self.path))
                proto.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.INT64, None)
                                          for n in self.tap_names)
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

    def _infer(self, x, taps):
        names = self.output_names + (self.tap_names if taps and self.reports_taps else [])
        return dict(zip(names, self.session.run(names, {self.input_name: x})))

    def describe(self):
        return {"name": self.name, "file": self.path.name, "providers": self.providers}
