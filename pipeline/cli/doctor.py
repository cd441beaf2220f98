"""`otcompress doctor`: what is installed and usable, with versions and the reason where not."""

from __future__ import annotations

import importlib


def _probe(mod: str):
    try:
        m = importlib.import_module(mod)
        return True, getattr(m, "__version__", "?")
    except Exception as e:
        return False, f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"


def report() -> str:
    lines = []
    ok, v = _probe("torch")
    lines.append(f"torch          {v}")
    if ok:
        import torch

        cuda = torch.cuda.is_available()
        lines.append(f"  CUDA         {'available: ' + torch.cuda.get_device_name(0) + ' (CUDA ' + str(torch.version.cuda) + ')' if cuda else 'not available'}")
    ok, v = _probe("onnxruntime")
    lines.append(f"onnxruntime    {v}")
    if ok:
        import onnxruntime as ort

        lines.append(f"  providers    {', '.join(ort.get_available_providers())}")
    for name in ("onnx", "onnxscript", "ot", "safetensors"):
        ok, v = _probe(name)
        lines.append(f"{name:<14} {v if ok else 'not usable: ' + v}")
    for name in ("tensorrt", "timm", "torchvision", "transformers", "torchmetrics", "pycocotools", "matplotlib",
                 "torch_pruning", "nncf"):
        ok, v = _probe(name)
        lines.append(f"{name:<14} {v if ok else 'not installed/usable (' + v + ')'}")
    from ..models.ultralytics import available as yolo

    lines.append(f"{'ultralytics':<14} {yolo()}")
    return "\n".join(lines)
