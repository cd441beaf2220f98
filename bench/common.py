"""Shared helpers for the benchmarks: models and data from ../shared/data (never copied into the repo)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("OTC_SHARED", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "bench" / "results"
CIFAR_NORM = ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])
IMAGENET_NORM = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])

MODELS = {
    "resnet20": ("cifar_resnet20", {}, "models/resnet20-12fca82f.th", "cifar10/test-lossless-932.npz", IMAGENET_NORM),
    "resnet56": ("cifar_resnet56", {}, "models/resnet56-4bfd9763.th", "cifar10/test-lossless-932.npz", IMAGENET_NORM),
    "vgg11_bn_half": ("cifar_vgg11_bn", {"width": 32}, "models/vgg11_bn_half.safetensors", "cifar10/test.npz", CIFAR_NORM),
    "mobilenetv2": ("cifar_mobilenetv2", {}, "models/mobilenetv2.safetensors", "cifar10/test.npz", CIFAR_NORM),
    "vit_tiny_p2": ("vit", dict(img_size=32, patch_size=2, embed_dim=192, depth=12, num_heads=3, num_classes=10),
                    "models/vit_tiny_p2.safetensors", "cifar10/test.npz", CIFAR_NORM),
}


def need(rel: str) -> Path:
    p = SHARED / rel
    if not p.exists():
        sys.exit(f"{p} is missing: the benchmarks read ../shared/data (set OTC_SHARED to point elsewhere)")
    return p


def load(name: str):
    from otcompress.checkpoint import load_weights, read_state_dict
    from otcompress.zoo import build_model

    arch, args, ckpt, data, norm = MODELS[name]
    model = build_model(arch, args)
    load_weights(model, read_state_dict(need(ckpt)), ckpt)
    return model.eval()


def eval_data(name: str, limit: int | None = None):
    from otcompress.data import load_dataset

    arch, args, ckpt, data, norm = MODELS[name]
    ds = load_dataset(need(data), limit)
    return ds.batch(slice(None), *norm), ds.y


def save(name: str, obj) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    p = RESULTS / name
    p.write_text(json.dumps(obj, indent=2) + "\n")
    return p
