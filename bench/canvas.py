"""A detection set built from CIFAR-10 (../shared/data): objects pasted onto larger canvases at known boxes.
Training canvases are drawn on the fly from the training images, test canvases from test.npz, calibration
canvases from the training images with another seed (never the test images). Cached (as .npz in otcompress' detection format:
x uint8 NHWC, boxes (N, M, 4) xyxy pixels, box_classes (N, M), -1 padding) outside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

CACHE = Path(os.environ.get("OTC_CACHE", Path.home() / ".cache" / "otcompress-bench"))
SIZE, MAX_OBJECTS, SMALLEST, LARGEST = 128, 3, 24, 56


def canvases(x: torch.Tensor, y: torch.Tensor, n: int, seed: int, size: int = SIZE):
    """n canvases of size x size from images x (N, 3, 32, 32) uint8 with classes y: a blurred, dimmed image as
    background, 1..MAX_OBJECTS objects resized to SMALLEST..LARGEST pixels at random places, overlapping little.
    Returns (images (n, 3, size, size) uint8, boxes (n, MAX_OBJECTS, 4) float32 xyxy, classes (n, MAX_OBJECTS) -1 pad)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(x), (n,), generator=g)
    bg = F.interpolate(F.avg_pool2d(x[idx].float(), 4), size=(size, size), mode="bilinear", align_corners=False)
    img = (0.45 * bg + 0.55 * 110).clamp(0, 255)
    boxes = torch.zeros(n, MAX_OBJECTS, 4)
    classes = torch.full((n, MAX_OBJECTS), -1, dtype=torch.long)
    count = torch.randint(1, MAX_OBJECTS + 1, (n,), generator=g)
    for i in range(n):
        placed = []
        for _ in range(int(count[i])):
            for _try in range(20):
                s = int(torch.randint(SMALLEST, LARGEST + 1, (1,), generator=g))
                x0, y0 = (int(v) for v in torch.randint(0, size - s + 1, (2,), generator=g))
                box = torch.tensor([x0, y0, x0 + s, y0 + s], dtype=torch.float32)
                if all(_iou(box, b) < 0.2 for b in placed):
                    break
            else:
                continue
            j = int(torch.randint(0, len(x), (1,), generator=g))
            obj = F.interpolate(x[j:j + 1].float(), size=(s, s), mode="bilinear", align_corners=False)[0]
            img[i, :, y0:y0 + s, x0:x0 + s] = obj
            k = len(placed)
            boxes[i, k], classes[i, k] = box, int(y[j])
            placed.append(box)
    return img.round().to(torch.uint8), boxes, classes


def _iou(a, b) -> float:
    lt, rb = torch.maximum(a[:2], b[:2]), torch.minimum(a[2:], b[2:])
    inter = (rb - lt).clamp(min=0).prod()
    return float(inter / ((a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod() - inter))


def save(path: Path, img: torch.Tensor, boxes: torch.Tensor, classes: torch.Tensor) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, x=img.permute(0, 2, 3, 1).numpy(), boxes=boxes.numpy(), box_classes=classes.numpy())
    os.replace(tmp, path)
    return path


def cifar(shared: Path):
    """(train x, train y, test x, test y) as uint8 NCHW tensors and class tensors."""
    from otcompress.data import load_dataset

    train = load_dataset(shared / "cifar10" / "train-imagefolder.tar.gz")
    test = load_dataset(shared / "cifar10" / "test.npz")
    return train.x, train.y, test.x, test.y


def sets(shared: Path, size: int = SIZE, offset: int = 0, test_n: int = 1000, calib_n: int = 512) -> dict[str, Path]:
    """The cached test and calibration canvases (built once) at `size`, classes shifted by `offset` (torchvision
    detectors keep class 0 for the background)."""
    tag = f"canvas{size}" + (f"+{offset}" if offset else "")
    out = {"test": CACHE / f"{tag}-test.npz", "calib": CACHE / f"{tag}-calib.npz"}
    if all(p.exists() for p in out.values()):
        return out
    tx, ty, vx, vy = cifar(shared)
    for key, (x, y, n, seed) in {"test": (vx, vy, test_n, 1), "calib": (tx, ty, calib_n, 3)}.items():
        img, boxes, classes = canvases(x, y, n, seed=seed, size=size)
        save(out[key], img, boxes, torch.where(classes >= 0, classes + offset, classes))
    return out
