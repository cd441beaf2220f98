"""Shrink channel groups. A keep strategy decides, per group, which m of n channels stay and what they hold:
`TopK` keeps the most important ones as they are (magnitude pruning), `OTFusion` transports all n onto m
(Intra-Fusion), `Given` takes the channels another method chose (DTP's learned masks). Groups split into
chunks (grouped convolutions, GroupNorm) keep the same count in every chunk and never mix chunks; frozen
channels are always kept. Plans are made on the untouched model; values are written where they are kept
(into the first positions of each chunk where a grouped conv reads them) and every layer then loses the
dropped positions at once."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from ..progress import bar as progress_bar

from ..registry import Registry
from .allocation import ALLOCATIONS, DEFAULT_ALLOCATION, group_count, ratios_for
from .fusion import OT_DEFAULTS, cost_kind, fusion_maps, group_features, producer_rows, transport_plan, write_group
from .groups import Group, GroupGraph
from .importance import DEFAULT_IMPORTANCE, Importance, criterion
from .sensitivity import FILL

STRATEGIES = Registry("keep strategy")


class Keep:
    """A keep strategy. `count` is how many channels group g keeps; `plan` returns the target channels (whose
    values the kept positions will hold; sorted within each chunk, chunks in order) and, for fusing strategies,
    the n x m transport plan whose columns follow the targets."""

    name = "keep"
    importance: Importance | None = None
    measured: dict[str, torch.Tensor] = {}  # group root -> scores measured on another copy of the model

    def count(self, g: Group, ratio: float, round_to: int) -> int:
        return group_count(g, ratio, round_to)

    def scores(self, g: Group) -> torch.Tensor:
        m = self.measured.get(g.root)
        if m is not None and len(m) == g.n:
            s = m
        else:
            s = self.importance(g).double() if self.importance is not None else torch.zeros(g.n, dtype=torch.float64)
        return torch.where(g.forced, torch.inf, s) if g.forced is not None else s

    def plan(self, g: Group, m: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError


@STRATEGIES.register("prune")
class TopK(Keep):
    name = "prune"

    def __init__(self, importance: str | Importance = DEFAULT_IMPORTANCE):
        self.importance = criterion(importance) if isinstance(importance, str) else importance

    def plan(self, g, m):
        s, per = self.scores(g), m // g.n_chunks
        kept = [members[torch.argsort(s[members], descending=True, stable=True)[:per]].sort().values
                for members in g.chunk_members()]
        return torch.cat(kept), None


@STRATEGIES.register("intrafusion")
class OTFusion(TopK):
    name = "intrafusion"

    def __init__(self, importance=DEFAULT_IMPORTANCE, **ot):
        """`ot`: fusion, solver, reg, targets, marginals (defaults: fusion.OT_DEFAULTS)."""
        super().__init__(importance)
        unknown = set(ot) - set(OT_DEFAULTS)
        if unknown:
            raise TypeError(f"unknown Intra-Fusion options {sorted(unknown)}; known: {sorted(OT_DEFAULTS)}")
        opts = {**OT_DEFAULTS, **ot}
        self.fusion = opts.pop("fusion")
        self.ot = opts
        self.notes: dict[str, str] = {}

    def plan(self, g, m):
        if not g.fusable:  # a layer reads only part of the group: the channels can only be dropped
            self.notes[g.root] = f"dropped, not fused: {g.note}"
            return super().plan(g, m)
        feats, s, per = group_features(g), self.scores(g), m // g.n_chunks
        if cost_kind(g.n // g.n_chunks, per, feats.shape[1]) != "l1":
            self.notes[g.root] = "L2 transport cost (the L1 cost of a group this wide would take minutes)"
        targets, blocks = [], []
        for members in g.chunk_members():  # chunks never mix: one transport per chunk
            P, local = transport_plan(feats[members], torch.where(s[members].isinf(), 1e30, s[members]), per, **self.ot)
            targets.append(members[local])
            blocks.append((members, P))
        P = torch.zeros(g.n, m, dtype=torch.float64)
        col = 0
        for members, Pc in blocks:
            P[members[:, None], torch.arange(col, col + Pc.shape[1])] = Pc
            col += Pc.shape[1]
        return torch.cat(targets), P


@dataclass
class Given(Keep):
    """Kept channels chosen elsewhere: {group root: channel indices}. Groups not named stay whole."""

    keep: dict[str, torch.Tensor]
    name = "given"

    def count(self, g, ratio, round_to):
        return len(self.keep[g.root]) if g.root in self.keep else g.n

    def plan(self, g, m):
        kept = torch.as_tensor(self.keep[g.root]).sort().values
        return torch.cat([kept[torch.isin(kept, members)] for members in g.chunk_members()]), None


def slots_for(g: Group, targets: torch.Tensor) -> torch.Tensor:
    """Where the kept values go: the targets' own positions, or the first positions of each chunk where a
    grouped convolution reads the group (it takes the same columns in every chunk)."""
    if not g.placement:
        return targets
    per = len(targets) // g.n_chunks
    return torch.cat([members[:per] for members in g.chunk_members()])


def shrink_channels(model: nn.Module, example: torch.Tensor, keep: Keep | str, *, sparsity=0.0, round_to=1, exclude=(),
                    scope=None, data=None, flops: float | None = None, allocation: str = DEFAULT_ALLOCATION,
                    unfolded: nn.Module | None = None, progress=True, cost=None, target: float | None = None,
                    probe=None, proxy: str = FILL, memo: dict | None = None, **options) -> "Shrunk":
    """Shrink every channel group of `model` in place.

    Args:
        example: an input batch of the model's shape (the analysis traces at it).
        keep: a Keep strategy, or its registered name ("prune", "intrafusion") with `options` for it.
        sparsity: fraction of channels removed per group (a number, a per-stage list or a pattern table).
        flops: instead of sparsity, the fraction of conv/linear FLOPs to keep; `allocation` shares it.
        cost, target: instead, a cost model (cost.ratio(keeps): e.g. a calibrated latency.LatencyModel, built for
            this model's groups) and the fraction of it to keep. probe: calibration images for allocations
            that measure (sensitivity), run through the model before it is shrunk. proxy: what a cut channel
            reads when sensitivity measures it (channels/sensitivity.py FILLS). memo: a dict in which the
            sensitivity measurements are kept for later calls on a copy of the same model (a retried target).
        round_to: kept counts are multiples of it where the group allows.
        exclude: producer-layer patterns left whole. scope: "all" or "internal" (the model's default).
        data: (x, y) for criteria that read data. unfolded: the model before fold_bn, scored instead.

    Returns: Shrunk, one record per group (before, after, layers), with `.left_whole`, `.chosen`, `.maps`.

    Raises:
        OTCError: a sparsity form the model's groups do not fit, a criterion that finds nothing to score.
    """
    if isinstance(keep, str):
        keep = STRATEGIES[keep](**options)
    graph = GroupGraph(model, example, exclude=exclude, scope=scope)
    groups = graph.groups()
    if keep.importance is not None:
        keep.importance.prepare(model, data)
        if unfolded is not None and not keep.importance.needs_data:
            keep.measured = {g.root: keep.importance(g).double()
                             for g in GroupGraph(unfolded, example, exclude=exclude, scope=scope).groups()}
    if flops is not None or cost is not None:
        if cost is None:
            from .flops import FlopsModel

            cost, target = FlopsModel(model, example, groups), flops
        elif callable(cost) and not hasattr(cost, "ratio"):
            cost = cost(groups)  # a cost model built for these groups
        counts = ALLOCATIONS[allocation](groups, cost, target, lambda g, p: keep.count(g, p, round_to), keep.scores,
                                         probe=(model, probe, proxy, memo) if probe is not None else None)
    else:
        counts = [keep.count(g, p, round_to) for g, p in zip(groups, ratios_for(groups, sparsity))]
    plans = [(g, *keep.plan(g, m)) for g, m in zip(groups, counts) if m < g.n]
    kept, chosen, maps = {}, {}, {}
    for g, targets, P in progress_bar(plans, desc=keep.name, enabled=progress):
        slots = slots_for(g, targets)
        if P is not None:
            rows = producer_rows(g)
            t_out, t_in = fusion_maps(P, getattr(keep, "fusion", OT_DEFAULTS["fusion"]), targets, rows.norm(dim=1))
            write_group(g, t_out, t_in, slots)
        else:
            t_out = torch.zeros(len(targets), g.n, dtype=torch.float64)
            t_out[torch.arange(len(targets)), targets] = 1.0
            if not torch.equal(slots, targets):  # move the kept channels to their slots
                write_group(g, t_out, t_out, slots)
        kept[g.root] = slots
        chosen[g.root] = targets
        maps.update(output_maps(g, t_out, slots))
    graph.apply(kept)
    notes = getattr(keep, "notes", {})
    report = [{"group": g.root, "before": g.n, "after": len(kept[g.root]), "layers": g.layers,
               "fused": P is not None, **({"note": notes[g.root]} if g.root in notes else {})} for g, _, P in plans]
    listed = {r["group"] for r in report}
    report += [{"group": g.root, "before": g.n, "after": g.n, "layers": g.layers, "fused": False}
               for g in groups if g.root not in listed]
    return Shrunk(report, graph.describe_frozen(), chosen, maps)


def output_maps(g: Group, t_out: torch.Tensor, slots: torch.Tensor) -> dict[str, torch.Tensor]:
    """For every conv/linear whose outputs are this group's channels: (new outputs x original outputs), each
    new output a combination of the original ones (one-hot when pruned, the fusion weights when fused)."""
    out = {}
    for s in g.slices:
        if not (s.role == "out" or (s.role == "channel" and isinstance(s.module, (nn.modules.conv._ConvNd, nn.Linear)))):
            continue
        if s.index.shape[1] != 1 or bool((s.index < 0).any()):
            continue
        pos = s.index[:, 0]
        order = torch.argsort(pos[slots])  # removal keeps the remaining outputs in their original order
        m = torch.zeros(len(slots), s.module.weight.shape[0], dtype=torch.float32)
        m[:, pos] = t_out[order].float()
        out[s.name] = m
    return out


class Shrunk(list):
    """The per-group records, plus `left_whole` (the groups that could not shrink safely, with the reason),
    `chosen` (per group, the channels whose values were kept: Given(chosen) repeats the choice) and `maps`
    (per shrunk layer, how its new outputs combine its original ones)."""

    def __init__(self, records, left_whole, chosen, maps):
        super().__init__(records)
        self.left_whole, self.chosen, self.maps = left_whole, chosen, maps
