"""A differentiable FLOPs model for the FLOPs-budget mode (DTP supplement A.9): each conv/linear costs
its dense FLOPs times the keep ratio of the group feeding its inputs and of the group owning its
outputs (once for depthwise convs, whose inputs and outputs are the same channels)."""

from __future__ import annotations

import torch
import torch.nn as nn

from .groups import CONV, Group, is_depthwise


def per_layer(model: nn.Module, example: torch.Tensor, fn) -> dict:
    """{layer name: fn(module, its input, its output)} for every conv/linear layer, from one forward pass."""
    names = {m: n for n, m in model.named_modules()}
    out = {}

    def hook(m, i, o):
        out[names[m]] = fn(m, i[0], o)

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (CONV, nn.Linear))]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hs:
            h.remove()
    return out


def layer_flops(model: nn.Module, example: torch.Tensor) -> dict[str, float]:
    def flops(m, x, o):
        spatial = o[0].numel() / o.shape[1] if isinstance(m, CONV) else o[..., 0].numel() / o.shape[0]
        return 2.0 * m.weight.numel() * spatial

    return per_layer(model, example, flops)


class FlopsModel:
    """Conv/linear FLOPs as a function of each group's keep ratio k_g: a layer costs its dense FLOPs times the
    kept fraction of its inputs (a share-weighted mix of the groups it reads: concat consumers read several)
    times the kept fraction of its outputs (its own group; depthwise convs count once)."""

    def __init__(self, model: nn.Module, example: torch.Tensor, groups: list[Group]):
        self.base = layer_flops(model, example)
        self.total = sum(self.base.values())
        names = list(self.base)
        row = {n: i for i, n in enumerate(names)}
        G = len(groups)
        a_in = torch.zeros(len(names), G + 1, dtype=torch.float64)
        a_out = torch.zeros(len(names), G + 1, dtype=torch.float64)
        for gi, g in enumerate(groups):
            for s in g.slices:
                if s.name not in row or s.constraint or not isinstance(s.module, (CONV, nn.Linear)):
                    continue
                r = row[s.name]
                m = s.module
                width = m.out_features if isinstance(m, nn.Linear) else m.out_channels
                if is_depthwise(s.module) or s.role == "out":
                    a_out[r, gi] = (s.index >= 0).sum().item() / width
                elif s.role in ("in", "gin"):
                    in_width = m.in_features if isinstance(m, nn.Linear) else m.in_channels
                    a_in[r, gi] += (s.index >= 0).sum().item() / in_width
        a_in[:, G] = 1 - a_in[:, :G].sum(1)  # inputs no group shrinks
        a_out[:, G] = 1 - a_out[:, :G].sum(1)
        self.flops = torch.tensor(list(self.base.values()), dtype=torch.float64)
        self.a_in, self.a_out = a_in, a_out

    def ratio(self, keep) -> torch.Tensor:
        """Fraction of the dense conv/linear FLOPs that survive with these keep ratios (one per group; a
        tensor keeps its device and gradient). A few vectorised kernels: it runs every step in budget mode."""
        k = torch.as_tensor(keep, dtype=torch.float64)
        k = torch.cat([k.double(), k.new_ones(1, dtype=torch.float64)])
        f, a_in, a_out = (t.to(k.device) for t in (self.flops, self.a_in, self.a_out))
        return (f * (a_in @ k) * (a_out @ k)).sum() / self.total

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
