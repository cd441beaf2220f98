"""Backends: how an exported model is run. Each is one BACKENDS entry naming the artifact file it runs and
its Runner; the validate stage, the validate command and `bench` check an artifact with every backend
registered for it (a second runtime for model.onnx is one more entry)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from otcompress.registry import Registry


@dataclass(frozen=True)
class Backend:
    name: str
    artifact: str  # file name inside an artifact folder
    suffixes: tuple[str, ...]  # files this backend runs
    runner: str | type  # a Runner class, or "module:Class" imported on use (TensorRT imports only where installed)

    def open(self, path: str | Path, **kw):
        cls = self.runner
        if isinstance(cls, str):
            import importlib

            mod, _, attr = cls.partition(":")
            cls = getattr(importlib.import_module(mod), attr)
        runner = cls(path, **kw)
        runner.name = self.name
        return runner


BACKENDS = Registry("backend")
BACKENDS.register("onnxruntime", Backend("onnxruntime", "model.onnx", (".onnx",), "otcompress.exporters.onnxruntime:OrtRunner"))
BACKENDS.register("tensorrt", Backend("tensorrt", "model.plan", (".plan", ".engine"), "otcompress.exporters.tensorrt:TrtRunner"))

