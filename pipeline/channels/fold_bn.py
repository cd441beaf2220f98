"""Fold BatchNorm into the conv/linear that feeds it, with the BN's real eps (the Intra-Fusion reference drops
it). Pairs come from the exported graph: a BN folds when its only input is a conv/linear output that nothing
else reads and both run once. A plain BN becomes Identity; a norm-activation layer (timm's BatchNormAct2d:
BN, dropout, activation in one module) keeps its dropout and activation. Every BN left is listed with the
reason."""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..registry import Registry
from ..surgery import REPLACEMENTS, set_submodule
from .affine import fold_affine
from .graph import Graph

LAYERS = ("conv2d", "conv1d", "conv3d", "linear")
BATCH_NORMS = ("batch_norm", "_native_batch_norm_legit_no_training")


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


@dataclass
class Fold:
    """A BatchNorm whose only input is a conv/linear output that nothing else reads."""

    layer: str
    bn: str


def find_folds(graph: Graph) -> tuple[list[Fold], list[tuple[str, str]], Counter]:
    """(foldable pairs, (bn, reason) for the others, how often each conv/linear/BN module runs)."""
    folds, unfoldable, calls = [], [], Counter()
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        op = graph.op(node)
        if op in LAYERS and (own := graph.owner(node.args[1])) is not None:
            calls[own[0]] += 1
        if op not in BATCH_NORMS:
            continue
        bns = {o[0] for o in map(graph.owner, node.args[1:5]) if o}
        if not bns:
            continue
        bn = bns.pop()
        calls[bn] += 1
        x = node.args[0]
        src = graph.op(x) if isinstance(x, torch.fx.Node) and x.op == "call_function" else ""
        if src in LAYERS and graph.users.get(x, 0) == 1:
            own = graph.owner(x.args[1])
            if own is not None:
                folds.append(Fold(own[0], bn))
                continue
            why = "its conv/linear has a computed weight"
        elif src in LAYERS:
            why = "its conv/linear output is also read elsewhere"
        else:
            why = f"its input comes from {src or 'the model input'}, not a conv/linear"
        unfoldable.append((bn, why))
    return folds, unfoldable, calls


def fold_into(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    """layer(x) -> bn(layer(x)) in the layer's own weights (eval-mode BN, its own eps)."""
    with torch.no_grad():
        scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
        fold_affine(layer, scale, shift - bn.running_mean * scale)


def replacement(bn: nn.Module) -> nn.Module | None:
    if type(bn) in PLAIN:
        return nn.Identity()
    build = NORM_ACT.get(type(bn).__name__)
    return build(bn) if build is not None else None


def folded_layers(model: nn.Module, example: torch.Tensor) -> set[str]:
    """The conv/linear layers that a BatchNorm directly follows (the repair re-estimates those BNs instead)."""
    return {f.layer for f in find_folds(Graph(model, example))[0]}


def fold_batchnorm(model: nn.Module, example: torch.Tensor) -> dict:
    """Fold in place; returns which BNs were folded and which were kept (and why)."""
    model.eval()
    mods = dict(model.named_modules())
    folds, unfoldable, calls = find_folds(Graph(model, example))
    folded, kept = [], [{"name": bn, "reason": why} for bn, why in unfoldable]
    for f in folds:
        layer, bn = mods[f.layer], mods[f.bn]
        why = None
        if calls[f.layer] > 1 or calls[f.bn] > 1:
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
