"""Detectors and segmenters for the tests: built as the pipeline builds them (ultralytics YOLO from its YAML,
torchvision's with weights=None and weights_backbone=None), with random weights made meaningful: norm affines
around 1, BatchNorm statistics measured on images, class-score biases at 0 so the detectors detect something
(a detection head's prior of 0.01 would leave nothing to compare), saved as a state_dict."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn


@dataclass(frozen=True)
class Det:
    arch: str
    size: int
    classes: int
    channel: str = "prune"  # the channel stage the test runs

    @property
    def id(self) -> str:
        return self.arch.split(":")[1].replace(".yaml", "")


DETECTORS = [
    Det("ultralytics:yolov8n.yaml", 64, 10, "intrafusion"),
    Det("ultralytics:yolo11n-seg.yaml", 64, 10),
    Det("torchvision:retinanet_resnet50_fpn", 64, 11),
    Det("torchvision:ssdlite320_mobilenet_v3_large", 160, 11, "intrafusion"),
    Det("torchvision:fcos_resnet50_fpn", 64, 11),
    Det("torchvision:deeplabv3_mobilenet_v3_large", 64, 10, "intrafusion"),
    Det("torchvision:fcn_resnet50", 64, 10),
]
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def spec(case: Det, checkpoint: str | None = None) -> dict:
    return {"arch": case.arch, "args": {"num_classes": case.classes}, "checkpoint": checkpoint,
            "input_shape": [1, 3, case.size, case.size]}


def images(case: Det, n: int, seed: int) -> np.ndarray:
    """Smooth random images (uint8 NHWC): blobs detectors fire on, unlike white noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, case.size // 8, case.size // 8, generator=g)
    x = torch.nn.functional.interpolate(x, size=(case.size, case.size), mode="bilinear", align_corners=False)
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def sensible(model: nn.Module, x: torch.Tensor, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)) and getattr(m, "weight", None) is not None:
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    for name, m in model.named_modules():  # class scores around 0.5 instead of a 0.01 prior
        if isinstance(m, nn.Conv2d) and m.bias is not None and any(k in name for k in ("cls_logits", "cv3", "classification_head")):
            m.bias.zero_()
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
    from .families import _lsuv

    _lsuv(model.eval(), x)  # unit-variance layer outputs: raw head tensors of a trained model's scale (a few units)
    for m in bns:  # then BatchNorm statistics measured on the images
        m.reset_running_stats()
        m.momentum = None
        m.train()
    model(x)
    return model.eval()


def materialise(case: Det, folder: Path) -> tuple[str, Path]:
    """(checkpoint path, data folder): the model with sensible weights saved as a state_dict, and calibration
    and eval images (.npz) beside it."""
    from safetensors.torch import save_file

    from otcompress.models import load

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = load(spec(case))
    x = torch.from_numpy(images(case, 8, 1)).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    sensible(model, x)
    ckpt = folder / f"{case.id}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    np.savez(folder / "calib.npz", x=images(case, 16, 2))
    np.savez(folder / "eval.npz", x=images(case, 8, 3))
    return str(ckpt), folder


def recipe(case: Det, ckpt: str, data: Path, stages: str) -> str:
    return (f'name = "{case.id}"\n[model]\narch = "{case.arch}"\nargs = {{num_classes = {case.classes}}}\n'
            f'checkpoint = "{ckpt}"\ninput_shape = [1, 3, {case.size}, {case.size}]\n'
            f'[data]\neval = "{data / "eval.npz"}"\ncalib = "{data / "calib.npz"}"\nmean = {MEAN}\nstd = {STD}\n' + stages)
