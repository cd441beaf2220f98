"""Fold BatchNorm into the conv/linear that feeds it, with the BN's real eps (the Intra-Fusion
reference drops eps). Pairs come from Torch-Pruning's traced graph, so any model that runs forward works."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..serialize import set_submodule


def _trace_edges(model: nn.Module, example: torch.Tensor):
    """(producer, bn) pairs where the BN's only input is the producer and nothing else reads the producer."""
    import torch_pruning as tp

    with torch.enable_grad():
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    pairs, unfoldable = [], []
    for m, node in dg.module2node.items():
        if not isinstance(m, nn.modules.batchnorm._BatchNorm):
            continue
        prods = [n for n in node.inputs]
        src = prods[0].module if len(prods) == 1 else None
        ok = (isinstance(src, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and len(prods[0].outputs) == 1
              and getattr(src, "out_channels", getattr(src, "out_features", None)) == m.num_features)
        (pairs if ok else unfoldable).append((src, m) if ok else m)
    return pairs, unfoldable


@torch.no_grad()
def fold_into(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> None:
    scale = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    w = layer.weight
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        raise ValueError("transposed convs are not folded")
    w.mul_(scale.view(-1, *([1] * (w.dim() - 1))))
    b = layer.bias if layer.bias is not None else torch.zeros_like(bn.running_mean)
    new_b = (b - bn.running_mean) * scale + shift
    if layer.bias is None:
        layer.bias = nn.Parameter(new_b.clone())
    else:
        layer.bias.copy_(new_b)


def fold_batchnorm(model: nn.Module, example: torch.Tensor) -> dict:
    """Fold in place; returns which BNs were folded and which were kept (and why)."""
    model.eval()
    names = {m: n for n, m in model.named_modules()}
    pairs, unfoldable = _trace_edges(model, example)
    for layer, bn in pairs:
        fold_into(layer, bn)
        set_submodule(model, names[bn], nn.Identity())
    return {"folded": [names[bn] for _, bn in pairs],
            "kept": [{"name": names[bn], "reason": "not fed by a single conv/linear whose output only it reads"}
                     for bn in unfoldable]}
