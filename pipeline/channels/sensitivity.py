"""Sensitivity-based allocation: measure on calibration images what each group's channels are worth, then share
the budget (FLOPs or latency) so the total measured error is least, as a knapsack over groups.

For every group and a few keep ratios, the group alone is cut (its least important channels replaced by their
mean at every layer that reads them: what removing them feeds the rest of the network once repair has put the
mean back) and the output error against the
uncut model is measured (mean squared error over the outputs' variance). That cheap proxy stands in for
"shrunk and repaired": the benchmark compares the allocations after the real repair. The knapsack is solved
greedily on marginal cost: from the dense model, repeatedly take the step (one group down one count level)
with the least error added per unit of budget saved, until the budget holds."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ..outputs import flatten
from .groups import Group

LEVELS = (0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125)  # keep ratios measured (1.0: no error)


def _consumers(g: Group):
    return [s for s in g.slices if s.role in ("in", "gin") and not s.constraint]


FILL = "mean"  # what a cut channel reads as: "mean" (its mean over the images: the shift repair corrects) or "zero"


def _input_means(model: nn.Module, groups: list[Group], x: torch.Tensor) -> tuple[dict, dict]:
    """The model's outputs on x, and each consumer layer's per-channel input mean on x."""
    means, hooks = {}, []
    for s in {id(s.module): s for g in groups for s in _consumers(g)}.values():
        dim = -1 if isinstance(s.module, nn.Linear) else 1

        def hook(mod, inp, dim=dim):
            y = inp[0].movedim(dim % inp[0].dim(), 0)
            means[mod] = y.reshape(y.shape[0], -1).mean(1)

        hooks.append((s.module, hook))
    return _outputs(model, x, hooks), means


def _outputs(model: nn.Module, x: torch.Tensor, pre_hooks: list) -> dict:
    """The model's flattened outputs on x with (module, forward pre-hook) pairs in place, removed after."""
    handles = [m.register_forward_pre_hook(fn) for m, fn in pre_hooks]
    try:
        return flatten(model(x))
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def group_errors(model: nn.Module, groups: list[Group], x: torch.Tensor, scores, levels=LEVELS,
                 fill: str = FILL) -> list[dict]:
    """Per group, {keep ratio: output error} with the group's lowest-scored channels replaced where they are
    read: by their mean over x (`fill = "mean"`, the default: repair's statistics matching puts the mean back,
    so what is measured is what it cannot) or by zero."""
    model.eval()
    ref, means = _input_means(model, groups, x)
    var = {k: v.var().clamp_min(1e-12) for k, v in ref.items()}
    out = []
    for g in groups:
        order = torch.argsort(scores(g), descending=True, stable=True)  # frozen channels score +inf: kept first
        errs = {1.0: 0.0}
        for k in levels:
            keep = max(1, int(round(k * g.n)))
            gone = order[keep:]
            if g.forced is not None:
                gone = gone[~g.forced[gone]]
            if len(gone) == 0:
                errs[k] = 0.0
                continue
            hooks = []
            for s in _consumers(g):
                pos = s.index[gone].flatten()
                pos = pos[pos >= 0]
                dim = -1 if isinstance(s.module, nn.Linear) else 1

                def cut(mod, inp, pos=pos, dim=dim):
                    y = inp[0].clone()
                    d = dim % y.dim()
                    if fill == "mean":
                        shape = [1] * y.dim()
                        shape[d] = len(pos)
                        y.index_copy_(d, pos.to(y.device), means[mod][pos].view(shape).expand(
                            *[len(pos) if i == d else n for i, n in enumerate(y.shape)]).contiguous())
                    else:
                        y.index_fill_(d, pos.to(y.device), 0.0)
                    return (y, *inp[1:])

                hooks.append((s.module, cut))
            got = _outputs(model, x, hooks)
            errs[k] = float(sum(((got[n] - ref[n]) ** 2).mean() / var[n] for n in ref))
        out.append(errs)
    return out


def _interp(errs: dict, k: float) -> float:
    ks = sorted(errs)
    return float(np.interp(k, ks, [errs[a] for a in ks]))


def allocate(groups: list[Group], budget, target: float, count_at, errors: list[dict], steps: int = 32) -> list[int]:
    """Counts per group meeting budget.ratio(keeps) <= target with the least total (interpolated) error."""
    counts = [g.n for g in groups]
    levels = []
    for g in groups:  # the counts each group may take, from whole down: what count_at allows at each sparsity
        opts = sorted({count_at(g, 1 - (i / steps)) for i in range(steps)} | {g.n}, reverse=True)
        levels.append(opts)
    pos = [0] * len(groups)

    def ratio(cs):
        return float(budget.ratio([c / g.n for c, g in zip(cs, groups)]))

    current = ratio(counts)
    while current > target:
        best, choice = None, None
        for i, g in enumerate(groups):
            # the next lower count that saves budget: a measured cost need not fall with every count (a
            # count off the kernel's channel block can be slower than the one above it), so step past those
            for j in range(pos[i] + 1, len(levels[i])):
                trial = list(counts)
                trial[i] = levels[i][j]
                saved = current - ratio(trial)
                if saved > 0:
                    break
            else:
                continue
            added = _interp(errors[i], trial[i] / g.n) - _interp(errors[i], counts[i] / g.n)
            value = max(added, 0.0) / saved
            if best is None or value < best:
                best, choice = value, (i, j, trial)
        if choice is None:
            break
        i, pos[i], counts = choice
        current = ratio(counts)
    return counts
