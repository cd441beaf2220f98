"""Shrink channel groups: plan (importance, kept count, transport) on the untouched model, then
apply group by group, writing fused values into the kept positions before Torch-Pruning removes the rest."""

from __future__ import annotations

import torch
import torch.nn as nn
from tqdm import tqdm

from .groups import GroupGraph
from .importance import group_importance, taylor_grads
from .intrafusion import fuse_group, group_features, transport_plan
from .sparsity import kept_count, ratios_for


def shrink_channels(model: nn.Module, example: torch.Tensor, *, method: str, sparsity, round_to=1, exclude=(),
                    importance="l1", scope=None, data=None, fusion="exact", solver="emd", reg=0.01,
                    targets="top", marginals="uniform", keep_override=None, progress=True) -> list[dict]:
    """method: 'prune' (keep top-m) or 'intrafusion' (OT fusion onto m targets).
    keep_override maps a group root to explicit kept channel indices (used by DTP's learned masks)."""
    graph = GroupGraph(model, example, exclude=exclude, scope=scope)
    groups = graph.groups()
    ratios = ratios_for(groups, sparsity) if keep_override is None else [0.0] * len(groups)
    grads = taylor_grads(model, *data) if importance == "taylor" else None
    plans = []
    for g, p in zip(groups, ratios):
        if keep_override is not None:
            if g.root in keep_override:
                plans.append((g, keep_override[g.root], None))
            continue
        m = kept_count(g.n, p, round_to)
        if m == g.n:
            continue
        imp = group_importance(g, importance, grads)
        if method == "intrafusion" and g.fusable:
            P, slots = transport_plan(group_features(g), imp, m, solver=solver, reg=reg, targets=targets, marginals=marginals)
            plans.append((g, slots, P))
        else:
            plans.append((g, torch.argsort(imp, descending=True)[:m].sort().values, None))
    report = []
    for g, keep, P in tqdm(plans, desc=method, disable=not progress, leave=False):
        if P is not None:
            fuse_group(graph.describe(model.get_submodule(g.root)), P, keep, fusion)
        graph.prune(g.root, keep)
        report.append({"group": g.root, "before": g.n, "after": len(keep), "layers": g.layers,
                       "fused": P is not None, **({"note": g.note} if g.note else {})})
    listed = {r["group"] for r in report}
    report += [{"group": g.root, "before": g.n, "after": g.n, "layers": g.layers, "fused": False}
               for g in groups if g.root not in listed]
    return report
