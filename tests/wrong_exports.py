"""Correct and deliberately wrong exports for the validation gate, on the shared trained checkpoints and real
CIFAR-10 images: the gate must pass every correct export and fail every wrong one. Used by
tests/test_gate.py and bench/gate.py."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
VIT = ("vit", dict(img_size=32, patch_size=2, embed_dim=192, depth=12, num_heads=3, num_classes=10),
       "models/vit_tiny_p2.safetensors", "cifar10/test.npz", ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]))
CNN = ("cifar_resnet20", {}, "models/resnet20-12fca82f.th", "cifar10/test-lossless-932.npz",
       ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))


def load(spec) -> torch.nn.Module:
    from otcompress.models import build_model
    from otcompress.models.checkpoint import load_weights, read_state_dict

    arch, args, ckpt, _, _ = spec
    model = build_model(arch, args)
    load_weights(model, read_state_dict(SHARED / ckpt), ckpt)
    return model.eval()


def images(spec, n: int) -> np.ndarray:
    from otcompress.validation import probe_inputs

    arch, args, _, data, (mean, std) = spec
    return probe_inputs(SHARED / data, mean, std, n, 0, [1, 3, 32, 32]).x


# ---- ViT: token reduction ----------------------------------------------------------------------
def vit_reference(method: str, keep: float = 0.9) -> torch.nn.Module:
    from otcompress.tokens.patch import apply_token_reduction

    model = load(VIT)
    apply_token_reduction(model, {"method": method, "keep": keep})
    return model


def _perturb(model, name: str, rel: float = 1e-3):
    m = copy.deepcopy(model)
    w = m.get_submodule(name.rsplit(".", 1)[0]).get_parameter(name.rsplit(".", 1)[1])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w.mul_(1 + rel * torch.randn(w.shape, generator=g))
    return m


def _swap_heads(model, block: int = 3):
    m = copy.deepcopy(model)
    attn = m.blocks[block].attn
    c, hd = attn.qkv.in_features, attn.head_dim
    with torch.no_grad():
        for t in (attn.qkv.weight, attn.qkv.bias):
            for part in range(3):  # q, k and v of heads 0 and 1 trade places; the projection does not follow
                a, b = slice(part * c, part * c + hd), slice(part * c + hd, part * c + 2 * hd)
                t[a], t[b] = t[b].clone(), t[a].clone()
    return m


def _retoken(model, **change):
    from otcompress.tokens.patch import apply_token_reduction

    m = copy.deepcopy(model)
    cfg = dict(m.blocks[0]._tok.cfg)
    cfg.update(change)
    apply_token_reduction(m, {k: v for k, v in cfg.items() if k in ("method", "keep", "r", "prop_attn", "margin",
                                                                    "alpha", "energy", "mergeable", "gamma", "mode",
                                                                    "blocks")})
    return m


def applies(case: str, method: str, mode: str | None = None) -> bool:
    """OTPrune in drop mode never merges: sizes stay 1 and proportional attention changes nothing."""
    from otcompress.tokens.patch import method_config

    drops = method_config({"method": method, **({"mode": mode} if mode else {})}).get("mode") == "drop"
    return not (drops and "proportional" in case)


WRONG_VIT = {
    "one weight tensor perturbed by 1e-3 (relative)": lambda m: _perturb(m, "blocks.6.mlp.fc2.weight"),
    "two attention heads swapped": _swap_heads,
    "merge exported without proportional attention": lambda m: _retoken(m, prop_attn=False),
    "another merge rule (PiToMe's decisions for ToMe, ToMe's otherwise)": lambda m: _retoken(
        m, method="pitome" if m.blocks[0]._tok.cfg["method"] == "tome" else "tome"),
}


# ---- CNN: BN folding and pruning ---------------------------------------------------------------
def cnn_reference(sparsity: float = 0.3):
    """ResNet-20 folded and pruned; returns the model and the channels each group kept."""
    from otcompress.channels.fold_bn import fold_batchnorm
    from otcompress.channels.shrink import shrink_channels

    model = load(CNN)
    x = torch.zeros(1, 3, 32, 32)
    fold_batchnorm(model, x)
    rep = shrink_channels(model, x, "prune", sparsity=sparsity, progress=False)
    return model, rep.chosen


def _fold_prune(chosen, eps=None, extra: int = 0):
    """The reference's pipeline with one thing wrong: BN folded with another eps, or one more channel kept
    in the first group (a pruned channel whose producer row and consumer column stay in place)."""
    from otcompress.channels.fold_bn import fold_batchnorm
    from otcompress.channels.shrink import Given, shrink_channels

    model = load(CNN)
    if eps is not None:
        for bn in model.modules():
            if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
                bn.eps = eps
    x = torch.zeros(1, 3, 32, 32)
    fold_batchnorm(model, x)
    keep = dict(chosen)
    if extra:
        first = next(iter(keep))
        gone = [c for c in range(int(max(keep[first])) + 2) if c not in set(keep[first].tolist())]
        keep[first] = torch.cat([keep[first], torch.tensor(gone[:extra])]).sort().values
    shrink_channels(model, x, Given(keep), progress=False)
    return model


WRONG_CNN = {
    "one weight tensor perturbed by 1e-3 (relative)": lambda m, chosen: _perturb(m, "layer2.1.conv1.weight"),
    "BatchNorm folded without its eps (the Intra-Fusion reference's fold)": lambda m, chosen: _fold_prune(chosen, eps=0.0),
    "a pruned channel's producer row and consumer column left in place": lambda m, chosen: _fold_prune(chosen, extra=1),
}


# ---- detectors: an ultralytics YOLOv8n -------------------------------------------------------------
def detector_cases(build, example: torch.Tensor) -> dict[str, tuple[torch.nn.Module, torch.nn.Module]]:
    """{case: (reference, exported)} for a YOLOv8n built (unfolded) by `build()`: the correct export of it folded
    and pruned 30%, and wrong ones: a weight perturbed, two class-score channels of the head swapped, BatchNorm
    folded without its eps. Used by tests/test_detection.py and bench/gate.py."""
    from otcompress.channels.fold_bn import fold_batchnorm
    from otcompress.channels.shrink import shrink_channels

    model = build()
    fold_batchnorm(model, example)
    shrink_channels(model, example, "prune", sparsity=0.3, progress=False)
    model.eval()
    cases = {"correct": (model, model)}
    cases["one weight tensor perturbed by 1e-3 (relative)"] = (model, _perturb(model, "model.2.cv1.conv.weight"))
    m = copy.deepcopy(model)
    with torch.no_grad():
        conv = m.model[-1].cv3[0][2]
        conv.weight[[0, 1]] = conv.weight[[1, 0]].clone()
        conv.bias[[0, 1]] = conv.bias[[1, 0]].clone()
    cases["two class-score channels of the head swapped"] = (model, m)
    ref, raw = build(), build()
    fold_batchnorm(ref, example)
    for mod in raw.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.eps = 0.0
    fold_batchnorm(raw, example)
    cases["BatchNorm folded without its eps (the Intra-Fusion reference's fold)"] = (ref.eval(), raw.eval())
    return cases
