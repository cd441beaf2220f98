"""One small interface for every backend: Runner.run(x: np.ndarray) -> {output name: np.ndarray}.
Inputs are checked against the model's declared shape and dtype before anything runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from otcompress.errors import OTCError

from .onnx import OUTPUT, load_checked


class Runner:
    name = "runner"
    input_shape: list = []  # ints, or strings for dynamic axes
    input_dtype = "float32"

    def check_input(self, x: np.ndarray) -> None:
        if x.dtype != np.dtype(self.input_dtype):
            raise OTCError(f"{self.name}: input dtype {x.dtype} does not match the model's {self.input_dtype}")
        if len(x.shape) != len(self.input_shape) or any(
                isinstance(d, int) and d > 0 and d != s for d, s in zip(self.input_shape, x.shape)):
            raise OTCError(f"{self.name}: input shape {list(x.shape)} does not match the model's {self.input_shape}")

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def run_batched(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Feed a static-batch model one batch-sized slice at a time."""
        b = self.input_shape[0] if self.input_shape and isinstance(self.input_shape[0], int) and self.input_shape[0] > 0 else len(x)
        outs = [self.run(np.ascontiguousarray(x[i:i + b])) for i in range(0, len(x), b)]
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

    def describe(self) -> dict:
        return {"name": self.name}


class TorchRunner(Runner):
    def __init__(self, model: nn.Module, name: str = "pytorch", device: str = "cpu", input_shape=None):
        self.model = model.eval().to(device)
        self.device = device
        self.name = name
        self.input_shape = ["batch", *input_shape[1:]] if input_shape else []

    def check_input(self, x):
        if self.input_shape:
            super().check_input(x)

    @torch.no_grad()
    def run(self, x):
        self.check_input(x)
        return {OUTPUT: self.model(torch.from_numpy(x).to(self.device)).float().cpu().numpy()}

    def describe(self):
        return {"name": self.name, "device": self.device}


def ort_providers() -> list[str]:
    import onnxruntime as ort

    avail = ort.get_available_providers()
    return [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]


class OrtRunner(Runner):
    def __init__(self, path: str | Path, providers: list[str] | None = None, name: str = "onnxruntime"):
        import onnxruntime as ort

        self.path = Path(path)
        load_checked(self.path)
        try:
            so = ort.SessionOptions()
            so.log_severity_level = 3
            self.session = ort.InferenceSession(str(self.path), so, providers=providers or ort_providers())
        except Exception as e:
            raise OTCError(f"{self.path}: onnxruntime cannot load it ({str(e)[:300]})") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = [d if isinstance(d, int) else str(d) for d in inp.shape]
        self.input_dtype = {"tensor(float)": "float32", "tensor(float16)": "float16"}.get(inp.type, "float32")
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.name = name

    @property
    def providers(self) -> list[str]:
        """The providers the session really uses: onnxruntime falls back to CPU silently."""
        return self.session.get_providers()

    def run(self, x):
        self.check_input(x)
        return dict(zip(self.output_names, self.session.run(None, {self.input_name: x})))

    def describe(self):
        return {"name": self.name, "file": self.path.name, "providers": self.providers}
