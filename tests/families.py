"""The model families the pipeline supports, as the test matrix and the coverage benchmark use them: how to
build each (torchvision, timm, Hugging Face; random weights, small inputs) with weights that make every
comparison meaningful, and the recipes that take each end to end."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn


@dataclass(frozen=True)
class Case:
    arch: str  # recipe arch; "hf:<kind>" cases are written to a directory first
    args: dict = field(default_factory=dict)
    size: int = 64  # input height and width
    method: str = "tome"  # token method for ViTs

    @property
    def id(self) -> str:
        return self.arch.replace(":", "-")


TV = ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "regnet_x_400mf", "regnet_y_400mf", "mobilenet_v2",
      "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny", "densenet121",
      "shufflenet_v2_x0_5", "googlenet", "mnasnet0_5", "squeezenet1_0", "vgg11_bn", "alexnet"]
TIMM = ["ghostnet_100", "rexnet_100", "repvgg_a0", "cspresnet50", "dla34", "resnet50d", "seresnet50", "convnext_nano",
        "efficientnet_b0", "mobilenetv3_large_100"]
CNNS = ([Case(f"torchvision:{n}", {"num_classes": 10, **({"aux_logits": False, "init_weights": True} if n == "googlenet" else {})})
         for n in TV] + [Case(f"timm:{n}", {"num_classes": 10}) for n in TIMM]
        + [Case("hf:resnet"), Case("hf:convnext")])

TINY_VIT = dict(img_size=32, patch_size=4, depth=2, num_classes=10)
VITS = [
    Case("timm:vit_tiny_patch16_224", TINY_VIT, 32, "tome"),
    Case("timm:deit_tiny_distilled_patch16_224", TINY_VIT, 32, "pitome"),
    Case("timm:vit_small_patch16_224", dict(TINY_VIT, embed_dim=48, num_heads=3, reg_tokens=4, class_token=False,
                                            global_pool="avg", qk_norm=True, init_values=0.5), 32, "otprune"),
    Case("hf:vit", {}, 32, "pitome"),
    Case("hf:deit", {}, 32, "tome"),
    Case("hf:deit-teacher", {}, 32, "otprune"),
    Case("torchvision:vit_b_16", {"image_size": 64, "num_classes": 10}, 64, "tome"),
]


def sensible_init(model: nn.Module, x: torch.Tensor, seed: int = 0) -> nn.Module:
    """Random-initialised nets often output logits near 1e-10 (zero-initialised last norms, tiny layer
    scales), which makes every comparison pass vacuously. Norm affine parameters are drawn around 1, layer
    scales set to O(1), and BatchNorm statistics measured on x, so activations and logits have a real scale."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("gamma", "layer_scale", "layer_scale_parameter") or name.endswith(("ls1.gamma", "ls2.gamma")):
                p.copy_(torch.rand(p.shape, generator=g) * 0.5 + 0.5)
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)) and getattr(m, "weight", None) is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        for m in model.modules():  # zero-initialised heads (timm ViTs) and N(0, 0.01) ones (torchvision MobileNetV3,
            if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):  # EfficientNet) output next to nothing
                std = (1.0 / m.weight[0].numel()) ** 0.5
                if m.weight.std() < 0.5 * std:
                    m.weight.normal_(0, std, generator=g)
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        model(x)
        model.eval()
        out = _logits(model, x)
        if out.std() < 0.05:  # no norm layers to lean on (AlexNet): unit-variance layer outputs, one layer at a time
            _lsuv(model, x)
            out = _logits(model, x)
        if out.std() < 0.05:
            raise AssertionError(f"{type(model).__name__}: logits std {out.std():.2g}; comparisons would be vacuous")
    return model


def _logits(model, x):
    out = model(x)
    return out if isinstance(out, torch.Tensor) else out.logits


def _lsuv(model: nn.Module, x: torch.Tensor) -> None:
    """Layer-sequential unit variance (Mishkin & Matas, 2016): in forward order, scale each conv/linear so
    its output on x has unit standard deviation."""
    order, stds = [], {}

    def hook(m, inp, out):
        if m not in stds:
            order.append(m)
        stds[m] = float(out.std())

    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        model(x)
        for m in list(order):
            model(x)
            if stds[m] > 0:
                m.weight.div_(stds[m])
                if m.bias is not None:
                    m.bias.div_(stds[m])
    finally:
        for h in handles:
            h.remove()


HF_CONFIGS = {
    "resnet": ("ResNetForImageClassification", "ResNetConfig",
               dict(embedding_size=16, hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1], layer_type="bottleneck", num_labels=10)),
    "convnext": ("ConvNextForImageClassification", "ConvNextConfig",
                 dict(hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 2, 1], num_labels=10, layer_scale_init_value=0.5)),
    "vit": ("ViTForImageClassification", "ViTConfig",
            dict(image_size=32, patch_size=4, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                 intermediate_size=96, num_labels=10)),
    "deit": ("DeiTForImageClassification", "DeiTConfig",
             dict(image_size=32, patch_size=4, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                  intermediate_size=96, num_labels=10)),
    "deit-teacher": ("DeiTForImageClassificationWithTeacher", "DeiTConfig",
                     dict(image_size=32, patch_size=4, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                          intermediate_size=96, num_labels=10)),
}


def materialise(case: Case, folder: Path) -> tuple[str, str | None]:
    """(recipe arch, checkpoint path or None): the model built with sensible weights, saved the way its
    users save it (a state_dict file; a save_pretrained directory for Hugging Face)."""
    from otcompress.models import build_model

    x = torch.randn(16, 3, case.size, case.size, generator=torch.Generator().manual_seed(1))
    folder.mkdir(parents=True, exist_ok=True)
    if case.arch.startswith("hf:"):
        import transformers

        cls, cfg, kw = HF_CONFIGS[case.arch[3:]]
        torch.manual_seed(0)
        model = getattr(transformers, cls)(getattr(transformers, cfg)(**kw)).eval()
        from otcompress.models.adapt import logits_only

        sensible_init(logits_only(model), x)
        path = folder / case.id
        model.save_pretrained(str(path))
        return f"hf:{path}", None
    torch.manual_seed(0)
    model = sensible_init(build_model(case.arch, case.args), x)
    from safetensors.torch import save_file

    ckpt = folder / f"{case.id}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    return case.arch, str(ckpt)


def train_data(folder: Path, size: int, n: int = 16) -> Path:
    """A few labelled random images (uint8 NHWC, as [data] accepts) for the training stages."""
    path = folder / f"train{size}.npz"
    if not path.exists():
        rng = np.random.default_rng(0)
        np.savez(path, x=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), y=rng.integers(0, 10, n))
    return path


def recipe(case: Case, arch: str, ckpt: str | None, stages: str, data: Path | None = None) -> str:
    args = ", ".join(f"{k} = {json.dumps(v)}" for k, v in case.args.items()) if not arch.startswith("hf:") else ""
    head = (f'name = "{case.id}"\n[model]\narch = "{arch}"\nargs = {{{args}}}\n'
            + (f'checkpoint = "{ckpt}"\n' if ckpt else "") + f"input_shape = [1, 3, {case.size}, {case.size}]\n")
    if data:
        head += f'[data]\ntrain = "{data}"\nmean = [0.5, 0.5, 0.5]\nstd = [0.25, 0.25, 0.25]\n'
    return head + stages


def record(row: dict) -> None:
    """Append one result row where the coverage benchmark asked for them (OTC_COVERAGE_JSON)."""
    path = os.environ.get("OTC_COVERAGE_JSON")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
