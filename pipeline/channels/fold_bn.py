"""Fold BatchNorm into the conv/linear that feeds it, with the BN's real eps (the Intra-Fusion reference drops
it). Pairs come from the channel trace: a BN folds when its only input is a conv/linear output that nothing
else reads and that layer runs once. A plain BN becomes Identity; a norm-activation layer (timm's
BatchNormAct2d: BN, dropout, activation in one module) keeps its dropout and activation. Every BN left
is listed with the reason."""

from __future__ import annotations

import copy
from collections import Counter

import torch
import torch.nn as nn

from ..registry import Registry
from ..serialize import REPLACEMENTS, set_submodule
from .trace import trace_channels


class FoldedNormAct(nn.Module):
    """What is left of a norm-activation layer once its BatchNorm is folded: its dropout and activation
    (same child names, so their parameters keep their state_dict keys)."""

    def __init__(self, drop: nn.Module, act: nn.Module):
        super().__init__()
        self.drop, self.act = drop, act

    def forward(self, x):
        return self.act(self.drop(x))


# BatchNorm subclasses whose forward is "BN, then more": what replaces them once the BN part is folded
NORM_ACT = Registry("norm-activation layer")
NORM_ACT.register("BatchNormAct2d", lambda bn: FoldedNormAct(bn.drop, bn.act))
NORM_ACT.register("SyncBatchNormAct", lambda bn: FoldedNormAct(bn.drop, bn.act))
REPLACEMENTS.register("FoldedNormAct", lambda spec, fresh: FoldedNormAct(copy.deepcopy(fresh.drop), copy.deepcopy(fresh.act)))
PLAIN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@torch.no_grad()
def fold_into(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    w = layer.weight
    w.mul_(scale.view(-1, *([1] * (w.dim() - 1))))
    b = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
    new_b = (b - bn.running_mean) * scale + shift
    if layer.bias is None:
        layer.bias = nn.Parameter(new_b.clone())
    else:
        layer.bias.copy_(new_b)


def replacement(bn: nn.Module) -> nn.Module | None:
    if type(bn) in PLAIN:
        return nn.Identity()
    build = NORM_ACT.get(type(bn).__name__)
    return build(bn) if build is not None else None


def fold_batchnorm(model: nn.Module, example: torch.Tensor) -> dict:
    """Fold in place; returns which BNs were folded and which were kept (and why)."""
    model.eval()
    mods = dict(model.named_modules())
    trace = trace_channels(model, example)
    calls = Counter(u.module for u in trace.uses if u.role == "out")
    bn_calls = Counter(u.module for u in trace.uses if u.role == "channel" and isinstance(mods.get(u.module), nn.modules.batchnorm._BatchNorm))
    folded, kept = [], [{"name": bn, "reason": why} for bn, why in trace.unfoldable]
    for f in trace.folds:
        layer, bn = mods[f.layer], mods[f.bn]
        why = None
        if calls[f.layer] > 1 or bn_calls[f.bn] > 1:
            why = "the layer or the BatchNorm runs more than once"
        elif not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_var is None:
            why = "it has no running statistics"
        elif isinstance(layer, nn.modules.conv._ConvTransposeNd):
            why = "transposed convolutions are not folded"
        else:
            new = replacement(bn)
            if new is None:
                why = f"{type(bn).__name__} is a BatchNorm subclass with its own forward (register it in NORM_ACT)"
        if why:
            kept.append({"name": f.bn, "reason": why})
            continue
        fold_into(layer, bn)
        set_submodule(model, f.bn, new)
        folded.append(f.bn)
    return {"folded": folded, "kept": kept}
