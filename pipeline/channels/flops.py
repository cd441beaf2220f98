"""A differentiable FLOPs model for the FLOPs-budget mode (DTP supplement A.9): each conv/linear costs
its dense FLOPs times the keep ratio of the group feeding its inputs and of the group owning its
outputs (once for depthwise convs, whose inputs and outputs are the same channels)."""

from __future__ import annotations

import torch
import torch.nn as nn

from .groups import CONV, Group, is_depthwise


def layer_flops(model: nn.Module, example: torch.Tensor) -> dict[str, float]:
    names = {m: n for n, m in model.named_modules()}
    out = {}

    def hook(m, i, o):
        spatial = o[0].numel() / o.shape[1] if isinstance(m, CONV) else o[..., 0].numel() / o.shape[0]
        out[names[m]] = 2.0 * m.weight.numel() * spatial

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (CONV, nn.Linear))]
    with torch.no_grad():
        model(example)
    for h in hs:
        h.remove()
    return out


class FlopsModel:
    def __init__(self, model: nn.Module, example: torch.Tensor, groups: list[Group]):
        self.base = layer_flops(model, example)
        self.total = sum(self.base.values())
        role = {}
        for gi, g in enumerate(groups):
            for s in g.slices:
                if isinstance(s.module, (CONV, nn.Linear)):
                    r = "both" if is_depthwise(s.module) else ("in" if s.role == "gin" else s.role)
                    role.setdefault(s.name, {})[r] = gi
        none = len(groups)  # index of the constant 1 appended to the keep ratios
        gin, gout = [], []
        for name in self.base:
            r = role.get(name, {})
            gin.append(none if "both" in r else r.get("in", none))
            gout.append(r.get("both", r.get("out", none)))
        self.flops = torch.tensor(list(self.base.values()), dtype=torch.float64)
        self.gin, self.gout = torch.tensor(gin), torch.tensor(gout)

    def ratio(self, keep) -> torch.Tensor:
        """Fraction of the dense conv/linear FLOPs that survive with these keep ratios (one per group; a
        tensor keeps its device and gradient). A few vectorised kernels: it runs every step in budget mode."""
        k = torch.as_tensor(keep, dtype=torch.float64)
        k = torch.cat([k.double(), k.new_ones(1, dtype=torch.float64)])
        f, gin, gout = (t.to(k.device) for t in (self.flops, self.gin, self.gout))
        return (f * k[gin] * k[gout]).sum() / self.total

    def uniform_keep(self, target: float, n: int) -> float:
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if float(self.ratio([mid] * n)) > target:
                hi = mid
            else:
                lo = mid
        return (lo + hi) / 2

    def fit_counts(self, logits: torch.Tensor, sizes: list[int], target: float) -> list[int]:
        """Integer kept counts near sigmoid(logits) whose FLOPs ratio is as close to target as one shift allows."""
        def counts(shift):
            return [max(1, min(n, round(float(torch.sigmoid(t + shift)) * n))) for t, n in zip(logits, sizes)]

        lo, hi = -30.0, 30.0
        for _ in range(60):
            mid = (lo + hi) / 2
            ks = counts(mid)
            if float(self.ratio([k / n for k, n in zip(ks, sizes)])) > target:
                hi = mid
            else:
                lo = mid
        best = min((counts(s) for s in (lo, hi)),
                   key=lambda ks: abs(float(self.ratio([k / n for k, n in zip(ks, sizes)])) - target))
        return best
