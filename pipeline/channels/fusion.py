"""Intra-Fusion (Theus et al., ICLR 2024): instead of dropping the n - m weakest channels of a group,
transport all n onto m targets with an optimal-transport plan P (n x m) and fuse.

Function-preserving fusion: a target's producer row is the mass-weighted *average* of its sources
(P / b, columns of P normalised) and its consumer column the *sum* (P / a). On exact duplicates this
is exact. The reference code uses P / a on both sides, which sums producers (n/m times too large);
it is kept as fusion = "reference" for comparison."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import ot
import torch

from ..registry import Registry
from .groups import Group, Slice
from .importance import channel_values, write_values

FUSIONS = Registry("fusion variant")
# the defaults of Intra-Fusion's options, defined once (the intrafusion stage's keys and the Python API read them)
OT_DEFAULTS = {"fusion": "merge", "solver": "emd", "reg": 0.01, "targets": "top", "marginals": "uniform"}


def group_features(g: Group) -> torch.Tensor:
    """Per channel: producer rows and consumer columns concatenated (biases and norms excluded)."""
    parts = [channel_values(s, s.module.weight.detach()) for s in g.slices
             if s.role in ("out", "in", "gin") or (s.role == "channel" and isinstance(s.module, torch.nn.modules.conv._ConvNd))]
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


def medoids(f: torch.Tensor, importance: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means into m clusters; each cluster's most important member among the nearest to its centroid
    (sorted channel indices) and the cluster sizes (an empty cluster takes the next most important channel)."""
    cent = kmeans(f, m)
    assign = torch.cdist(f, cent).argmin(1)
    chosen, sizes = [], []
    for j in range(m):
        members = torch.nonzero(assign == j).flatten()
        if len(members) == 0:
            continue
        d = (f[members] - cent[j]).norm(dim=1)
        near = members[d <= d.min() + 1e-9]
        chosen.append(int(near[torch.argmax(importance[near])]))
        sizes.append(len(members))
    for i in torch.argsort(importance, descending=True).tolist():  # empty clusters: fill with important channels
        if len(chosen) == m:
            break
        if i not in chosen:
            chosen.append(i)
            sizes.append(0)
    order = torch.argsort(torch.tensor(chosen))
    sz = torch.tensor(sizes, dtype=torch.float64)[order]
    sz = sz + (sz == 0).double() * 1e-6  # a filler target still needs a little mass
    return torch.tensor(chosen)[order], sz / sz.sum() * f.shape[0]


def distinct_top(f: torch.Tensor, importance: torch.Tensor, m: int) -> torch.Tensor:
    """Top-m channels by importance, where exact copies of an already chosen channel come last:
    two identical targets would waste a slot (and break exactness on duplicated neurons)."""
    order = torch.argsort(importance, descending=True, stable=True)
    label = copies(f)
    seen, first, rest = set(), [], []
    for i in order.tolist():
        (rest if label[i] in seen else first).append(i)
        seen.add(label[i])
    return torch.tensor((first + rest)[:m]).sort().values


def copies(f: torch.Tensor) -> list[int]:
    """A label per row, equal for exactly equal rows: rows sorted by a random projection, neighbours with
    (nearly) equal projections compared exactly (BLAS may round identical rows differently)."""
    key = f @ torch.rand(f.shape[1], generator=torch.Generator().manual_seed(0), dtype=f.dtype)
    order = torch.argsort(key).tolist()
    label = list(range(len(order)))
    for a, b in zip(order, order[1:]):
        if abs(float(key[b] - key[a])) <= 1e-9 * (abs(float(key[a])) + 1e-30) and torch.equal(f[a], f[b]):
            label[b] = label[a]
    return label


L1_BUDGET = 2e9  # n*m*d: beyond it the L1 cost takes many seconds on a CPU (a 4096-wide classifier: minutes)


def cost_kind(n: int, m: int, d: int) -> str:
    """The reference's cost is the L1 distance; where it would be too slow, the L2 distance (one matrix
    product) stands in. Both are 0 exactly on duplicated channels."""
    return "l1" if n * m * d <= L1_BUDGET else "l2"


def transport_plan(features: torch.Tensor, importance: torch.Tensor, m: int, *, solver=OT_DEFAULTS["solver"],
                   reg=OT_DEFAULTS["reg"], targets=OT_DEFAULTS["targets"],
                   marginals=OT_DEFAULTS["marginals"]) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (P, slots): P is n x m, slots the m channel indices whose positions receive the targets."""
    n = features.shape[0]
    f = torch.nn.functional.normalize(features.double(), dim=1)
    sizes = None
    if targets == "medoids":  # one kept channel per cluster of similar channels, the one nearest its centroid
        slots, sizes = medoids(f, importance, m)
    else:
        slots = distinct_top(f, importance, m)
    tgt = torch.nn.functional.normalize(kmeans(f, m), dim=1) if targets == "centroids" else f[slots]
    p = 1 if cost_kind(n, m, f.shape[1]) == "l1" else 2
    cost = torch.cdist(f.float(), tgt.float(), p=p).double().numpy()
    if marginals == "nearest":  # each target receives the channels nearest to it (unbalanced, no forced mixing)
        counts = np.bincount(cost.argmin(1), minlength=m).astype(np.float64) + 1e-9
        a, b = np.full(n, 1.0 / n), counts / counts.sum()
    elif sizes is not None and marginals == "uniform":  # each medoid receives its cluster
        a, b = np.full(n, 1.0 / n), sizes.numpy() / n
    elif marginals == "uniform":
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


@dataclass
class Transport:
    """An optimal-transport plan and what fusion variants may read: P (n x m, columns in `targets` order),
    the target channels, and each channel's producer weight norm (rows and biases of the group's producers)."""

    P: torch.Tensor
    targets: torch.Tensor | None = None
    norms: torch.Tensor | None = None


@FUSIONS.register("exact")
def exact_maps(t: Transport) -> tuple[torch.Tensor, torch.Tensor]:
    """Function-preserving: producers average their sources (P / b), consumers sum them (P / a)."""
    P = t.P
    a = P.sum(1).clamp_min(1e-300)
    b = P.sum(0).clamp_min(1e-300)
    return (P / b[None, :]).T, (P / a[:, None]).T


@FUSIONS.register("reference")
def reference_maps(t: Transport) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference code's maps: P / a on both sides, so producers are summed (n/m times too large)."""
    t_in = (t.P / t.P.sum(1).clamp_min(1e-300)[:, None]).T
    return t_in, t_in


@FUSIONS.register("merge")
def merge_maps(t: Transport) -> tuple[torch.Tensor, torch.Tensor]:
    """Producers stay the target channels exactly; each consumer column absorbs its sources' columns, scaled
    by the sources' producer norm over the target's: a ReLU channel whose weights point where its target's
    do is that target's output times the norm ratio (Neuron Merging, Kim et al. 2020, on the OT plan).
    Exact on duplicated channels; the kept features are the originals, so a least-squares repair refits on
    undistorted inputs."""
    P = t.P
    n, m = P.shape
    t_out = torch.zeros(m, n, dtype=P.dtype)
    t_out[torch.arange(m), t.targets] = 1.0
    ratio = t.norms[:, None] / t.norms[t.targets][None, :].clamp_min(1e-12)  # (n, m)
    return t_out, (P / P.sum(1).clamp_min(1e-300)[:, None] * ratio).T


def fusion_maps(P: torch.Tensor, fusion: str = OT_DEFAULTS["fusion"], targets=None, norms=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(T_out, T_in), each m x n: producers/norms use T_out, consumers T_in."""
    return FUSIONS[fusion](Transport(P, targets, norms))


def producer_rows(g: Group) -> torch.Tensor:
    """Per channel, its producers' rows and biases concatenated (n, d)."""
    parts = [channel_values(s, getattr(s.module, name).detach()).double() for s in g.slices if s.role == "out"
             for name in s.tensors if getattr(s.module, name, None) is not None]
    return torch.cat(parts, 1) if parts else torch.ones(g.n, 1, dtype=torch.float64)


def _write(s: Slice, t: torch.Tensor, T: torch.Tensor, slots: torch.Tensor) -> None:
    """Replace the slot channels of tensor t with T-combinations of all n channels (in place). T is sparse (an
    optimal plan has at most n + m - 1 entries; a selection m), so the product costs O((n + m) d)."""
    vals = channel_values(s, t.detach())
    fused = torch.sparse.mm(T.to(vals.dtype).to_sparse(), vals)  # (m, d)
    write_values(s, t, s.index[slots].flatten(), fused)


def write_group(g: Group, t_out: torch.Tensor, t_in: torch.Tensor, slots: torch.Tensor) -> None:
    """Every layer of the group: producers and per-channel layers get T_out combinations of the n channels
    in their slot positions, consumers T_in combinations (m x n each)."""
    for s in g.slices:
        if s.constraint:
            continue
        T = t_in if s.role in ("in", "gin") else t_out
        for name in s.tensors:
            t = getattr(s.module, name, None)
            if t is not None:
                _write(s, t, T, slots)
