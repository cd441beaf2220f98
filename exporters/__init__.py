"""Backends: how a compressed model is exported and run. Each is one BACKENDS entry naming its artifact
file and its Runner; the validate stage, the validate command and `bench` all find them here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from otcompress.registry import Registry


@dataclass(frozen=True)
class Backend:
    name: str
    artifact: str  # file name inside an artifact folder
    suffixes: tuple[str, ...]  # files this backend runs
    runner: str  # "module:Class", imported on use (TensorRT imports only where installed)

    def open(self, path: str | Path, **kw):
        import importlib

        mod, _, cls = self.runner.partition(":")
        return getattr(importlib.import_module(mod), cls)(path, **kw)


BACKENDS = Registry("backend")
BACKENDS.register("onnxruntime", Backend("onnxruntime", "model.onnx", (".onnx",), "otcompress.exporters.onnx:OrtRunner"))
BACKENDS.register("tensorrt", Backend("tensorrt", "model.plan", (".plan", ".engine"), "otcompress.exporters.tensorrt:TrtRunner"))


def backend_for(path: Path) -> Backend | None:
    return next((b for _, b in BACKENDS.items() if path.suffix in b.suffixes), None)
