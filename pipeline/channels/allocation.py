"""Sparsity in three forms: one number; a per-stage list ([0, p, p, p] as in the DTP supplement, stage k =
`layerk`, stage 0 = the stem; for nets without `layerN` modules entry i is the i-th group); or a table of
layer-name patterns matched against each group's producer layers (first match wins, unmatched
groups are left alone)."""

from __future__ import annotations

import math

import torch

from ..errors import OTCError
from ..registry import Registry
from .groups import Group, stage_of


def check_sparsity(v) -> str | None:
    def ok(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < 1

    if ok(v):
        return None
    if isinstance(v, list) and v and all(ok(x) for x in v):
        return None
    if isinstance(v, dict) and v and all(ok(x) for x in v.values()):
        return None
    return "expected a fraction in [0, 1), a list of them (one per stage), or a table {\"pattern\" = fraction}"


def ratios_for(groups: list[Group], sparsity) -> list[float]:
    if isinstance(sparsity, (int, float)):
        return [float(sparsity)] * len(groups)
    if isinstance(sparsity, dict):
        out = []
        for g in groups:
            hit = next((v for p, v in sparsity.items() if g.matches(p)), 0.0)
            out.append(float(hit))
        unused = [p for p in sparsity if not any(g.matches(p) for g in groups)]
        if unused:
            raise OTCError(f"sparsity pattern(s) {unused} match no channel group; the groups are "
                           f"{', '.join(g.root for g in groups[:8])}{' …' if len(groups) > 8 else ''} (see otcompress inspect)")
        return out
    staged = any(stage_of(g.root) is not None for g in groups)
    if staged:
        stages = sorted({g.stage for g in groups})
        if max(stages) >= len(sparsity):
            raise OTCError(f"sparsity list has {len(sparsity)} entries but the model's groups reach stage {max(stages)} "
                           f"(stage 0 = stem, stage k = layerk); give {max(stages) + 1} entries")
        return [float(sparsity[g.stage]) for g in groups]
    if len(sparsity) != len(groups):
        raise OTCError(f"sparsity list has {len(sparsity)} entries; this model has no layerN stages, so give one per "
                       f"prunable group ({len(groups)}: {', '.join(g.root for g in groups[:6])}…)")
    return [float(v) for v in sparsity]


def kept_count(n: int, ratio: float, round_to: int = 1, chunks: int = 1, forced: int = 0) -> int:
    """Channels a group of n keeps at this sparsity: a multiple of round_to (where the group allows it), the
    same number in each of its chunks, at least one per chunk. `forced` channels are always kept; the ratio
    applies to the others."""
    if forced:
        return forced + max(1, round((n - forced) * (1.0 - ratio))) if forced < n else n
    keep = round(n * (1.0 - ratio))
    unit = chunks * round_to // math.gcd(chunks, round_to) if round_to > 1 else chunks
    if unit > 1 and n % unit == 0:
        keep = max(unit, int(round(keep / unit)) * unit)
    elif chunks > 1:
        keep = max(chunks, int(round(keep / chunks)) * chunks)
    return int(min(n, max(1, keep)))


def group_count(g: Group, ratio: float, round_to: int = 1) -> int:
    """Channels group g keeps at this sparsity: `kept_count` with the group's chunks and frozen channels, where
    every chunk keeps as many as its most constrained chunk must (a chunk holding only frozen channels keeps
    them all, so every chunk does)."""
    forced = g.forced
    if forced is not None and g.n_chunks > 1:
        per_n = g.n // g.n_chunks
        per_forced = max(int(forced[m].sum()) for m in g.chunk_members())
        return min(per_n, max(per_forced, kept_count(per_n, ratio, round_to))) * g.n_chunks
    return kept_count(g.n, ratio, round_to, g.n_chunks, int(forced.sum()) if forced is not None else 0)


# ---- FLOPs targets ------------------------------------------------------------------------------
ALLOCATIONS = Registry("allocation criterion")
DEFAULT_ALLOCATION = "uniform"


def _closest(ratio_of, lo: float, hi: float, target: float, steps: int = 40) -> float:
    """The parameter in [lo, hi] whose FLOPs ratio (decreasing in it) is closest to target."""
    best = lo
    for _ in range(steps):
        mid = (lo + hi) / 2
        r = ratio_of(mid)
        if abs(r - target) < abs(ratio_of(best) - target):
            best = mid
        lo, hi = (mid, hi) if r > target else (lo, mid)
    return best


# An allocation shares a budget among groups: fn(groups, cost, target, count_at, scores, probe) -> counts, where
# cost.ratio(keeps) is the budget's fraction (FLOPs, or calibrated latency) left at these keep ratios, count_at(g, p)
# the count group g keeps at sparsity p, scores(g) its channel scores, probe (model, calibration images, proxy: a
# channels/sensitivity.py FILLS name, memo: a dict that keeps measurements across calls on the same model, or None)
# or None.


@ALLOCATIONS.register("uniform")
def uniform(groups, flops, target, count_at, scores, probe=None) -> list[int]:
    """One sparsity for every group, chosen so the FLOPs land on the target."""
    def counts(p):
        return [count_at(g, p) for g in groups]

    def ratio(p):
        return float(flops.ratio([c / g.n for c, g in zip(counts(p), groups)]))

    return counts(_closest(ratio, 0.0, 0.999, target))


@ALLOCATIONS.register("global")
def global_threshold(groups, flops, target, count_at, scores, probe=None) -> list[int]:
    """One importance threshold across groups (scores normalised per layer, as Torch-Pruning's global
    pruning does): a group keeps its channels above it, so unimportant layers shrink more."""
    s = [scores(g) for g in groups]
    finite = torch.cat([x[torch.isfinite(x)] for x in s])

    def counts(t):
        return [count_at(g, 1.0 - float((x >= t).double().mean())) for g, x in zip(groups, s)]

    def ratio(t):
        return float(flops.ratio([c / g.n for c, g in zip(counts(t), groups)]))

    return counts(_closest(ratio, float(finite.min()), float(finite.max()) + 1e-9, target))


def check_flops(v) -> str | None:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1:
        return None
    return "expected the fraction of FLOPs to keep, in (0, 1]"


@ALLOCATIONS.register("sensitivity")
def sensitivity(groups, cost, target, count_at, scores, probe=None) -> list[int]:
    """Least total measured output error for the budget (channels/sensitivity.py); needs calibration images."""
    from .sensitivity import allocate, group_errors

    if probe is None:
        raise OTCError("allocation = 'sensitivity' measures each group on calibration images: give [data].calib "
                       "(or [data].train)")
    model, x, proxy, memo = probe
    key = (tuple(g.root for g in groups), proxy)
    errors = memo.get(key) if memo is not None else None
    if errors is None:
        errors = group_errors(model, groups, x, scores, fill=proxy)
        if memo is not None:
            memo[key] = errors
    return allocate(groups, cost, target, count_at, errors)
