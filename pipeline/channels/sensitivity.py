"""Sensitivity-based allocation: measure on calibration images what each group's channels are worth, then share
the budget (FLOPs or latency) so the total measured error is least, as a knapsack over groups.

For every group and a few keep ratios, the group alone is cut (its least important channels replaced, at every
layer that reads them, by their mean: what removing them feeds the rest of the network once repair has put the
mean back; or by their prediction from the kept channels, or zero: FILLS) and the output error against the
uncut model is measured (mean squared error over the outputs' variance). That cheap proxy stands in for
"shrunk and repaired": the benchmark compares the allocations after the real repair. The knapsack is solved
greedily on marginal cost: from the dense model, repeatedly take the step (one group down one count level)
with the least error added per unit of budget saved, until the budget holds."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ..outputs import flatten
from ..registry import Registry
from .groups import Group

LEVELS = (0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125)  # keep ratios measured (1.0: no error)


def _consumers(g: Group):
    return [s for s in g.slices if s.role in ("in", "gin") and not s.constraint]


# what a cut channel reads as, each consumer layer seeing it: fn(channels-last input, cut positions, stats);
# the sensitivity allocation's `proxy` key
FILLS = Registry("sensitivity proxy")
FILL = "mean"
ROWS = 16  # sampled positions per image for the regression


@FILLS.register("zero")
def _fill_zero(y: torch.Tensor, pos: torch.Tensor, stats: dict) -> torch.Tensor:
    """Cut channels read zero (channels last)."""
    y[..., pos] = 0.0
    return y


@FILLS.register("mean")
def _fill_mean(y: torch.Tensor, pos: torch.Tensor, stats: dict) -> torch.Tensor:
    """Cut channels read their mean over the images: the shift repair's statistics matching corrects."""
    y[..., pos] = stats["mean"][pos].to(y)
    return y


@FILLS.register("regress")
def _fill_regress(y: torch.Tensor, pos: torch.Tensor, stats: dict) -> torch.Tensor:
    """Cut channels read their least-squares prediction from the channels still there, at the same position:
    what a consumer refit (repair's least squares) can recover from the kept inputs. A channel that copies
    kept ones costs nothing; one nobody predicts costs what its mean leaves."""
    rows = stats["rows"]  # (R, C) sampled input rows, float64
    keep = torch.ones(rows.shape[1], dtype=torch.bool)
    keep[pos] = False
    X = torch.cat([rows[:, keep], rows.new_ones(len(rows), 1)], 1)
    gram = X.T @ X
    lam = 1e-3 * gram.diagonal().mean().clamp_min(1e-12)
    B = torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=gram.dtype), X.T @ rows[:, pos]).to(y)
    y[..., pos] = y[..., keep] @ B[:-1] + B[-1]
    return y




def _input_stats(model: nn.Module, groups: list[Group], x: torch.Tensor) -> tuple[dict, dict]:
    """The model's outputs on x, and per consumer layer its input's per-channel mean and sampled rows."""
    return input_stats(model, list({id(s.module): s.module for g in groups for s in _consumers(g)}.values()), x)


def input_stats(model: nn.Module, modules: list[nn.Module], x: torch.Tensor, rows: int = ROWS,
                dtype=torch.float64) -> tuple[dict, dict]:
    """The model's outputs on x, and per module of `modules` (conv or linear layers) its input's per-channel
    mean and `rows` sampled rows per image (fixed positions, seeded): {module: {"mean": (C,), "rows": (R, C)}}."""
    stats, hooks = {}, []
    gen = torch.Generator().manual_seed(0)
    for m in modules:
        dim = -1 if isinstance(m, nn.Linear) else 1

        def hook(mod, inp, dim=dim):
            y = inp[0].detach().movedim(dim % inp[0].dim(), -1)
            flat = y.reshape(y.shape[0], -1, y.shape[-1]).to(dtype)  # (n, L, C)
            k = min(rows, flat.shape[1])
            pick = torch.stack([torch.randperm(flat.shape[1], generator=gen)[:k] for _ in range(len(flat))])
            sampled = flat.gather(1, pick[:, :, None].expand(-1, -1, flat.shape[-1])).reshape(-1, flat.shape[-1])
            stats[mod] = {"mean": flat.reshape(-1, flat.shape[-1]).mean(0), "rows": sampled}

        hooks.append((m, hook))
    return outputs(model, x, hooks), stats


def outputs(model: nn.Module, x: torch.Tensor, pre_hooks: list = ()) -> dict:
    """The model's flattened outputs on x with (module, forward pre-hook) pairs in place, removed after."""
    handles = [m.register_forward_pre_hook(fn) for m, fn in pre_hooks]
    try:
        return flatten(model(x))
    finally:
        for h in handles:
            h.remove()


def variances(ref: dict) -> dict:
    return {k: v.var().clamp_min(1e-12) for k, v in ref.items()}


def output_error(ref: dict, got: dict, var: dict | None = None) -> float:
    """Mean squared error of flattened outputs over the reference's variance, summed over outputs."""
    var = var or variances(ref)
    return float(sum(((got[n] - ref[n]) ** 2).mean() / var[n] for n in ref))


@torch.no_grad()
def group_errors(model: nn.Module, groups: list[Group], x: torch.Tensor, scores, levels=LEVELS,
                 fill: str = FILL) -> list[dict]:
    """Per group, {keep ratio: output error} with the group's lowest-scored channels replaced where they are
    read, as `fill` says (FILLS: "mean", the default, "regress" or "zero"). "regress" models repair's refit
    more closely but allocated worse after the real repair (CIFAR ResNet-56 at 42% FLOPs: 85.1 vs 86.2 top-1,
    VGG-11 at 50%: 83.7 vs 85.4): statistics matching, which every layer gets, restores means, not predictions."""
    model.eval()
    ref, stats = _input_stats(model, groups, x)
    var = variances(ref)
    fn = FILLS[fill]
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
                    d = dim % inp[0].dim()
                    y = fn(inp[0].movedim(d, -1).clone(), pos, stats[mod])
                    return (y.movedim(-1, d).contiguous(), *inp[1:])

                hooks.append((s.module, cut))
            errs[k] = output_error(ref, outputs(model, x, hooks), var)
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
