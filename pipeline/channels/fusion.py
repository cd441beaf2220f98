"""Intra-Fusion (Theus et al., ICLR 2024): instead of dropping the n - m weakest channels of a group,
transport all n onto m targets with an optimal-transport plan P (n x m) and fuse.

Function-preserving fusion: a target's producer row is the mass-weighted *average* of its sources
(P / b, columns of P normalised) and its consumer column the *sum* (P / a). On exact duplicates this
is exact. The reference code uses P / a on both sides, which sums producers (n/m times too large);
it is kept as fusion = "reference" for comparison."""

from __future__ import annotations

import numpy as np
import ot
import torch

from ..registry import Registry
from .groups import Group, Slice
from .importance import channel_values

FUSIONS = Registry("fusion variant")


def group_features(g: Group) -> torch.Tensor:
    """Per channel: producer rows and consumer columns concatenated (biases and norms excluded)."""
    parts = [channel_values(s, s.module.weight.detach()) for s in g.slices
             if s.role in ("out", "in") or (s.role == "channel" and isinstance(s.module, torch.nn.modules.conv._ConvNd))]
    return torch.cat([p.float() for p in parts], dim=1)


def kmeans(x: torch.Tensor, k: int, iters: int = 25, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    cent = x[torch.randperm(len(x), generator=g)[:k]].clone()
    for _ in range(iters):
        assign = torch.cdist(x, cent).argmin(1)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                cent[j] = members.mean(0)
    return cent


def distinct_top(f: torch.Tensor, importance: torch.Tensor, m: int) -> torch.Tensor:
    """Top-m channels by importance, where exact copies of an already chosen channel come last:
    two identical targets would waste a slot (and break exactness on duplicated neurons)."""
    order = torch.argsort(importance, descending=True, stable=True)
    _, inverse = torch.unique(f, dim=0, return_inverse=True)
    seen, first, rest = set(), [], []
    for i in order.tolist():
        (rest if inverse[i].item() in seen else first).append(i)
        seen.add(inverse[i].item())
    return torch.tensor((first + rest)[:m]).sort().values


def transport_plan(features: torch.Tensor, importance: torch.Tensor, m: int, *, solver="emd", reg=0.01,
                   targets="top", marginals="uniform") -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (P, slots): P is n x m, slots the m channel indices whose positions receive the targets."""
    n = features.shape[0]
    f = torch.nn.functional.normalize(features.double(), dim=1)
    slots = distinct_top(f, importance, m)
    tgt = f[slots] if targets == "top" else torch.nn.functional.normalize(kmeans(f, m), dim=1)
    cost = torch.cdist(f, tgt, p=1).numpy()
    if marginals == "uniform":
        a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    else:
        imp = importance.double().clamp_min(1e-12).numpy()
        a = imp / imp.sum()
        b = imp[slots.numpy()] if targets == "top" else np.full(m, 1.0)
        b = b / b.sum()
    if solver == "emd":
        P = ot.emd(a, b, cost, numItermax=1_000_000)
    else:
        P = ot.sinkhorn(a, b, cost / max(cost.max(), 1e-12), reg, numItermax=2000)
    return torch.from_numpy(np.asarray(P)), slots


@FUSIONS.register("exact")
def exact_maps(P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Function-preserving: producers average their sources (P / b), consumers sum them (P / a)."""
    a = P.sum(1).clamp_min(1e-300)
    b = P.sum(0).clamp_min(1e-300)
    return (P / b[None, :]).T, (P / a[:, None]).T


@FUSIONS.register("reference")
def reference_maps(P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference code's maps: P / a on both sides, so producers are summed (n/m times too large)."""
    t_in = (P / P.sum(1).clamp_min(1e-300)[:, None]).T
    return t_in, t_in


def fusion_maps(P: torch.Tensor, fusion: str = "exact") -> tuple[torch.Tensor, torch.Tensor]:
    """(T_out, T_in), each m x n: producers/norms use T_out, consumers T_in."""
    return FUSIONS[fusion](P)


def _write(s: Slice, t: torch.Tensor, T: torch.Tensor, slots: torch.Tensor) -> None:
    """Replace the slot channels of tensor t with T-combinations of all n channels (in place)."""
    vals = channel_values(s, t.detach()).double()  # (n, d)
    fused = (T @ vals).to(t.dtype)  # (m, d)
    n, r = s.index.shape
    pos = s.index[slots].flatten()
    with torch.no_grad():
        if s.role == "in":
            shaped = fused.reshape(len(slots), t.shape[0], r, *t.shape[2:]).transpose(0, 1)
            t[:, pos] = shaped.reshape(t.shape[0], len(slots) * r, *t.shape[2:])
        else:
            t[pos] = fused.reshape(len(slots) * r, *t.shape[1:])


def fuse_group(g: Group, P: torch.Tensor, slots: torch.Tensor, fusion: str = "exact") -> None:
    t_out, t_in = fusion_maps(P, fusion)
    for s in g.slices:
        m = s.module
        T = t_in if s.role == "in" else t_out
        _write(s, m.weight, T, slots)
        if s.role != "in":
            if getattr(m, "bias", None) is not None:
                _write(s, m.bias, T, slots)
            for buf in ("running_mean", "running_var"):
                if getattr(m, buf, None) is not None:
                    _write(s, getattr(m, buf), T, slots)
