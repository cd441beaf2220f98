"""Shrink channel groups. A keep strategy decides, per group, which m of n channels stay and what they hold:
`TopK` keeps the most important ones as they are (magnitude pruning), `OTFusion` transports all n onto m
(Intra-Fusion), `Given` takes the channels another method chose (DTP's learned masks). Plans are made on
the untouched model, then applied group by group: values are written into the kept positions before
Torch-Pruning removes the rest."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from tqdm import tqdm

from ..registry import Registry
from .allocation import kept_count, ratios_for
from .fusion import fuse_group, group_features, transport_plan
from .groups import Group, GroupGraph
from .importance import Importance, criterion

STRATEGIES = Registry("keep strategy")


class Keep:
    """A keep strategy. `count` is how many channels group g keeps; `plan` returns the kept positions
    (root channel indices, sorted) and, for fusing strategies, the n x m transport plan."""

    name = "keep"
    importance: Importance | None = None

    def count(self, g: Group, ratio: float, round_to: int) -> int:
        return kept_count(g.n, ratio, round_to)

    def plan(self, g: Group, m: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError


@STRATEGIES.register("prune")
class TopK(Keep):
    name = "prune"

    def __init__(self, importance: str | Importance = "l1"):
        self.importance = criterion(importance) if isinstance(importance, str) else importance

    def plan(self, g, m):
        return torch.argsort(self.importance(g), descending=True, stable=True)[:m].sort().values, None


@STRATEGIES.register("intrafusion")
class OTFusion(TopK):
    name = "intrafusion"

    def __init__(self, importance="l1", fusion="exact", solver="emd", reg=0.01, targets="top", marginals="uniform"):
        super().__init__(importance)
        self.fusion, self.ot = fusion, dict(solver=solver, reg=reg, targets=targets, marginals=marginals)

    def plan(self, g, m):
        if not g.fusable:  # a grouped conv or an uneven mapping: the channels can only be dropped
            return super().plan(g, m)
        slots_p = transport_plan(group_features(g), self.importance(g), m, **self.ot)
        return slots_p[1], slots_p[0]


@dataclass
class Given(Keep):
    """Kept channels chosen elsewhere: {group root: root channel indices}. Groups not named stay whole."""

    keep: dict[str, torch.Tensor]
    name = "given"

    def count(self, g, ratio, round_to):
        return len(self.keep[g.root]) if g.root in self.keep else g.n

    def plan(self, g, m):
        return torch.as_tensor(self.keep[g.root]).sort().values, None


def shrink_channels(model: nn.Module, example: torch.Tensor, keep: Keep | str, *, sparsity=0.0, round_to=1, exclude=(),
                    scope=None, data=None, progress=True, **options) -> list[dict]:
    """Shrink every channel group of `model` in place; returns one record per group (before, after, layers).
    `keep` is a strategy, or its registered name with `options` for its constructor."""
    if isinstance(keep, str):
        keep = STRATEGIES[keep](**options)
    graph = GroupGraph(model, example, exclude=exclude, scope=scope)
    groups = graph.groups()
    ratios = ratios_for(groups, sparsity)
    if keep.importance is not None:
        keep.importance.prepare(model, data)
    plans = []
    for g, p in zip(groups, ratios):
        m = keep.count(g, p, round_to)
        if m < g.n:
            plans.append((g, *keep.plan(g, m)))
    report = []
    for g, kept, P in tqdm(plans, desc=keep.name, disable=not progress, leave=False):
        if P is not None:
            fuse_group(graph.describe(model.get_submodule(g.root)), P, kept, getattr(keep, "fusion", "exact"))
        graph.prune(g.root, kept)
        report.append({"group": g.root, "before": g.n, "after": len(kept), "layers": g.layers,
                       "fused": P is not None, **({"note": g.note} if g.note else {})})
    listed = {r["group"] for r in report}
    report += [{"group": g.root, "before": g.n, "after": g.n, "layers": g.layers, "fused": False}
               for g in groups if g.root not in listed]
    return report
