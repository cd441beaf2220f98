"""Backends: how an exported model is run. Each is one BACKENDS entry naming the artifact file it runs and
its Runner; the validate stage, the validate command and `bench` check an artifact with every backend
registered for it (a second runtime for model.onnx is one more entry)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from otcompress.registry import Registry


@dataclass(frozen=True)
class Backend:
    """A runtime for one artifact. Args: its name (checks are named "export:<name>"), the artifact's file name
    inside an artifact folder, the file name endings it runs (the longest match wins: model.int8.onnx is the
    INT8 backend's, model.onnx the FP32 one's), and its Runner class (or "module:Class", imported on use)."""

    name: str
    artifact: str
    suffixes: tuple[str, ...]
    runner: str | type

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


def backends_for(path: str | Path) -> list[Backend]:
    """The backends that run a file, by its most specific matching ending."""
    name = Path(path).name
    hits = [(len(s), b) for b in BACKENDS.values() for s in b.suffixes if name.endswith(s)]
    if not hits:
        return []
    best = max(n for n, _ in hits)
    return [b for n, b in hits if n == best]
BACKENDS.register("onnxruntime", Backend("onnxruntime", "model.onnx", (".onnx",), "otcompress.exporters.onnxruntime:OrtRunner"))
BACKENDS.register("onnxruntime-int8", Backend("onnxruntime-int8", "model.int8.onnx", (".int8.onnx",),
                                              "otcompress.exporters.onnxruntime:OrtRunner"))
BACKENDS.register("tensorrt", Backend("tensorrt", "model.plan", (".plan", ".engine"), "otcompress.exporters.tensorrt:TrtRunner"))
BACKENDS.register("tensorrt-int8", Backend("tensorrt-int8", "model.int8.plan", (".int8.plan", ".int8.engine"),
                                           "otcompress.exporters.tensorrt:TrtRunner"))
