"""Token methods on the other ViT families, full depth (12 blocks) with random weights (no second trained ViT is
available offline): top-1 agreement of each method's default with the original model on CIFAR-10 test images
resized to the model's input, at the FLOPs of ToMe at keep 0.9, 0.8 and 0.7 (each other method's keep bisected
so its FLOPs land within 1% of ToMe's). Random weights make attention near-uniform and token similarity weak,
so this checks that every method behaves on every family; accuracy is vit_tiny_p2's (bench/tokens_curves.py).
bench/results/tokens_families.json and the README table.

    .venv/bin/python bench/tokens_families.py [--images 128] [--keeps 0.9,0.8,0.7]
"""

from __future__ import annotations

import argparse
import copy
import sys

import torch
import torch.nn.functional as F

from common import ROOT, publish, CIFAR_NORM, need
from tokens_curves import matched, flops, reduced

sys.path.insert(0, str(ROOT))
from tests.families import sensible_init  # noqa: E402

METHODS = ("tome", "pitome", "otprune")
VIT12 = dict(depth=12, num_classes=10)


def _timm(name, **kw):
    import timm

    return timm.create_model(name, pretrained=False, **VIT12, **kw)


def _hf(kind: str, size: int):
    import transformers

    cls, cfg = {"vit": ("ViTForImageClassification", "ViTConfig"), "deit": ("DeiTForImageClassification", "DeiTConfig")}[kind]
    from otcompress.models.adapt import logits_only

    model = getattr(transformers, cls)(getattr(transformers, cfg)(
        image_size=size, patch_size=16, hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
        intermediate_size=768, num_labels=10))
    return logits_only(model)


def _torchvision(size: int):
    from torchvision.models import vit_b_16

    return vit_b_16(weights=None, image_size=size, num_classes=10)


# (name, builder, input size)
FAMILIES = [
    ("timm vit_tiny_patch16_224", lambda: _timm("vit_tiny_patch16_224"), 224),
    ("timm deit_tiny_distilled_patch16_224", lambda: _timm("deit_tiny_distilled_patch16_224"), 224),
    ("timm vit (4 registers, avg pool, qk-norm, layer scale)", lambda: _timm(
        "vit_small_patch16_224", embed_dim=192, num_heads=3, reg_tokens=4, class_token=False, global_pool="avg",
        qk_norm=True, init_values=0.5), 224),
    ("hf ViT (hidden 192)", lambda: _hf("vit", 224), 224),
    ("hf DeiT (hidden 192)", lambda: _hf("deit", 224), 224),
    ("torchvision vit_b_16 (160 px)", lambda: _torchvision(160), 160),
]


def images(n: int, size: int) -> torch.Tensor:
    from otcompress.data import load_dataset

    ds = load_dataset(need("cifar10/test.npz"))
    x = ds.batch(slice(0, 10 * n, 10), *CIFAR_NORM)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def predict(m, x, batch=32):
    with torch.no_grad():
        return torch.cat([m(x[i:i + batch]).argmax(-1) for i in range(0, len(x), batch)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--keeps", default="0.9,0.8,0.7")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    rows = []
    for name, build, size in FAMILIES:
        torch.manual_seed(0)
        x = images(args.images, size)
        base = sensible_init(build().eval(), x[:16])
        shape = (1, 3, size, size)
        f0 = flops(base, shape)
        want = predict(base, x)
        for keep in [float(k) for k in args.keeps.split(",")]:
            tome = {"method": "tome", "keep": keep}
            target = flops(reduced(base, tome), shape) / f0
            for method in METHODS:
                cfg, ratio = (tome, target) if method == "tome" else matched(base, {"method": method}, target, f0, shape)
                got = predict(reduced(copy.deepcopy(base), cfg), x)
                rows.append({"family": name, "tome_keep": keep, "method": method, "config": cfg, "flops": ratio,
                             "tome_flops": target, "agreement": float((got == want).float().mean())})
                print(rows[-1], flush=True)
    publish("tokens_families.json", {"images": args.images, "rows": rows}, lambda res, path: None, markdown, None)


def markdown(res: dict) -> str:
    keeps = sorted({r["tome_keep"] for r in res["rows"]}, reverse=True)
    lines = ["| family | " + " | ".join(f"keep {k}: ToMe / PiToMe / OTPrune" for k in keeps) + " |",
             "|---|" + "---|" * len(keeps)]
    for fam in dict.fromkeys(r["family"] for r in res["rows"]):
        cells = []
        for k in keeps:
            a = {r["method"]: r["agreement"] for r in res["rows"] if r["family"] == fam and r["tome_keep"] == k}
            cells.append(" / ".join(f"{100 * a[m]:.0f}" for m in METHODS))
        lines.append(f"| {fam} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + (f"\n\ntop-1 agreement (%) with the original model, random weights, {res['images']} CIFAR-10 "
                               "test images resized; every method at ToMe's FLOPs (within 1%).")


if __name__ == "__main__":
    main()
