"""Token reduction plans. Each method looks at the patch tokens' metric (attention keys averaged over
heads) and returns `dest` (B, N): the output slot of every token, or -1 where a token is dropped.
`merge_weighted` then forms every slot's size-weighted average with one matmul. The number of slots is
fixed by r or k alone, never by the data, so every shape is static.

Only export- and TensorRT-friendly ops: comparisons, sums, cumsum, argmax, gather on index tensors and
matmul, and OTPrune's greedy loop as one Scan with a constant trip count. No sort/TopK (ranks come from
pairwise comparisons), no scatter (scatter_reduce(mean) exports silently wrong), no data-dependent shapes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ..recipe.schema import Field
from ..registry import Registry


def ranks_desc(v: torch.Tensor) -> torch.Tensor:
    """Rank of every entry in descending order, ties broken by index. PyTorch's sort and ONNX TopK order
    equal values differently, and identical tokens (flat image regions) tie exactly; explicit ranks make
    both backends take the same decisions."""
    idx = torch.arange(v.shape[-1], device=v.device)
    vi, vj = v.unsqueeze(-1), v.unsqueeze(-2)
    return ((vj > vi) | ((vj >= vi) & (idx < idx.unsqueeze(-1)))).sum(-1)  # j before i: larger, or equal and j < i


def merge_weighted(x: torch.Tensor, size: torch.Tensor, dest: torch.Tensor, slots: int):
    """Slot s holds the size-weighted average of the tokens with dest == s (dest -1: dropped) and the sum of
    their sizes. One (B, S, N) weight matrix and one matmul: on a GPU the merge is a handful of kernels."""
    w = torch.where(dest.unsqueeze(-1) == torch.arange(slots, device=dest.device), size, 0.0)  # (B, N, S)
    total = w.sum(1)  # (B, S): every slot receives at least one token
    return (w / total.unsqueeze(1)).transpose(1, 2).to(x.dtype) @ x, total.unsqueeze(-1)


def _cosine(metric):
    m = F.normalize(metric, dim=-1)
    return m @ m.transpose(-1, -2)


def _best(sim: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """For every token, the index of its most similar token among `allowed` (B, N) ones."""
    return sim.masked_fill(~allowed.unsqueeze(1), float("-inf")).argmax(dim=-1)


def tome(metric: torch.Tensor, r: int) -> torch.Tensor:
    """ToMe bipartite soft matching: A = even, B = odd tokens; the r best A->B edges merge.
    Slots: unmerged A tokens (best edge first), then the B tokens."""
    n = metric.shape[1]
    na = (n + 1) // 2
    m = F.normalize(metric, dim=-1)
    node_max, node_idx = (m[:, ::2] @ m[:, 1::2].transpose(-1, -2)).max(dim=-1)  # each A token's best B
    rank = ranks_desc(node_max)
    a_dest = torch.where(rank < r, na - r + node_idx, rank - r)
    b_dest = na - r + torch.arange(n // 2, device=metric.device).expand(metric.shape[0], -1)
    return torch.stack([a_dest[:, : n // 2], b_dest], dim=-1).flatten(1) if n % 2 == 0 else \
        torch.cat([torch.stack([a_dest[:, :-1], b_dest], dim=-1).flatten(1), a_dest[:, -1:]], dim=1)


def energy(metric: torch.Tensor, margin: float, alpha: float, form: str = "paper") -> tuple[torch.Tensor, torch.Tensor]:
    """PiToMe's energy: mean over j of f_m(cos(k_i, k_j)). "paper" (Eq. 4): f_m(x) = x above the margin and
    alpha*(exp(x - m) - 1) below; "elu" (the public code): ELU(x - m), i.e. x - m above the margin."""
    sim = _cosine(metric)
    above = sim if form == "paper" else sim - margin
    f = torch.where(sim >= margin, above, alpha * (torch.exp(sim - margin) - 1))
    return f.mean(dim=-1), sim


def pitome(metric: torch.Tensor, r: int, margin: float = 0.9, alpha: float = 1.0, form: str = "paper",
           mergeable: float = 1.0) -> torch.Tensor:
    """PiToMe: the c = min(n, mergeable * 2r) highest-energy tokens are mergeable, A/B alternating along the
    energy order, and the r A tokens with the best edges merge into their best B; the rest are protected.
    mergeable = 1 is the paper (c = 2r: every A token merges, however poor its best edge); larger values let
    the r merges pick ToMe's best edges among more candidates while the lowest-energy tokens stay protected.
    Slots: kept tokens (protected and unmerged A, in energy order), then the B tokens."""
    n = metric.shape[1]
    e, sim = energy(metric, margin, alpha, form)
    rank = ranks_desc(e)
    c = min(n, max(2 * r, int(round(mergeable * 2 * r))))
    nb = c // 2
    is_b = (rank < c) & (rank % 2 == 1)
    is_a = (rank < c) & (rank % 2 == 0)
    best = _best(sim, is_b)
    if c > 2 * r:  # choose the r best A->B edges, as ToMe does
        edge = sim.gather(2, best.unsqueeze(-1)).squeeze(-1).masked_fill(~is_a, float("-inf"))
        merged = is_a & (ranks_desc(edge) < r)
    else:
        merged = is_a
    kept = ~(merged | is_b)
    kept_rank = ((rank.unsqueeze(-1) > rank.unsqueeze(-2)) & kept.unsqueeze(-2)).sum(-1)  # kept tokens ahead of it
    own = torch.where(is_b, n - nb + rank // 2 - r, kept_rank)  # kept tokens, then the B tokens
    return torch.where(merged, own.gather(1, best), own)


def logdet_select(v: torch.Tensor, k: int, gamma: float = 0.01) -> torch.Tensor:
    """Boolean mask of the chosen tokens: greedy log-det (DPP MAP) selection of k tokens (OTPrune, supp. B),
    K = I + gamma * S S^T with S = V V^T. The incremental Cholesky update of the greedy scores
    d_i^2 -= e_i^2 is kept, but e is computed in the d-dimensional feature space instead of from the t
    Cholesky rows: with A = gamma V^T V - sum_t u_t u_t^T / d_t^2 (d x d), the new Cholesky column is
    e = V A v_j / d_j (Woodbury), so every step costs O(N d) with a fixed-size state and no growing
    concatenation. Same choices as the reference; vectorised over the batch. Eagerly the k steps are a
    Python loop; under torch.export and torch.compile they become one scan (an ONNX Scan node with a
    constant trip count), because unrolling k steps in every block made graphs of tens of thousands of
    nodes that took many minutes to export or compile. Runs in float32 even under autocast: the scores
    are differences of near-equal terms."""
    if v.is_cuda and torch.is_autocast_enabled("cuda"):
        with torch.autocast("cuda", enabled=False):
            return logdet_select(v.float(), k, gamma)
    B, N, _ = v.shape
    v = v.detach()  # the choice is discrete: no gradient flows through it (and scan needs none)
    v = F.normalize(v if v.dtype == torch.float64 else v.float(), dim=1)  # columns normalised across tokens
    a = gamma * (v.transpose(1, 2) @ v)  # (B, d, d)
    d2 = 1.0 + ((v @ a) * v).sum(-1)  # diag(K)
    idx = torch.arange(N, device=v.device)

    def step(state, _=None):  # chosen tokens carry d^2 = -inf, so argmax skips them and they mark the result
        d2, a = state
        dj, j = d2.max(dim=-1, keepdim=True)  # (B, 1)
        vj = v.gather(1, j.unsqueeze(-1).expand(-1, 1, v.shape[-1]))  # (B, 1, d)
        w = (vj @ a) * dj.clamp_min(1e-12).rsqrt().unsqueeze(-1)  # (B, 1, d): (A v_j)^T / d_j
        d2 = torch.where(idx == j, float("-inf"), d2 - (v @ w.transpose(1, 2)).squeeze(-1) ** 2)
        return (d2, a - w.transpose(1, 2) @ w), j

    state = (d2, a)
    if torch.compiler.is_exporting() or torch.compiler.is_compiling():
        from torch._higher_order_ops.scan import scan

        state = scan(step, state, idx.new_zeros(k))[0]
    else:
        for _ in range(k):
            state = step(state)[0]
    return state[0] == float("-inf")


def otprune(metric: torch.Tensor, k: int, gamma: float = 0.01, mode: str = "drop") -> torch.Tensor:
    """OTPrune: keep the k tokens of greatest log-det diversity (in token order); drop the rest, or merge
    each into its most similar kept token."""
    kept = logdet_select(metric, k, gamma)
    slot = kept.long().cumsum(dim=1) - 1
    if mode == "drop":
        return torch.where(kept, slot, torch.full_like(slot, -1))
    return torch.where(kept, slot, slot.gather(1, _best(_cosine(metric), kept)))


@dataclass(frozen=True)
class Method:
    """A token-reduction method: `plan(metric, r, cfg, layer, depth)` -> dest (B, N), each token's output slot
    (-1: dropped, only where `drops(cfg)`), with N - r slots. `fields`: the recipe keys it reads (added to
    the tokens stage's schema)."""

    plan: Callable[..., torch.Tensor]
    drops: Callable[[dict], bool] = lambda cfg: False
    fields: dict = field(default_factory=dict)
    bipartite: bool = True  # pairs tokens: at most half of a block's tokens can go (ToMe, PiToMe); else any but one


METHODS = Registry("token method")
METHODS.register("tome", Method(lambda metric, r, cfg, layer, depth: tome(metric, r)))
METHODS.register("pitome", Method(
    lambda metric, r, cfg, layer, depth: pitome(metric, r, margin=cfg["margin"] - cfg["margin"] * layer / depth,
                                                alpha=cfg["alpha"], form=cfg["energy"],
                                                mergeable=cfg["mergeable"]),
    fields={"margin": Field((float,), default=0.9, lo=0.0, hi=1.0, help="PiToMe's m0 (margin m_l = m0 - m0*l/L; the "
                                                                        "public code uses 0.75 for DeiT, 0.9 otherwise)"),
            "alpha": Field((float,), default=1.0, lo=0.0),
            "mergeable": Field((float,), default=2.0, lo=1.0,
                               help="mergeable tokens as a multiple of 2r (1: the paper, every A token merges; more: "
                                    "the r best edges among more candidates)"),
            "energy": Field((str,), default="elu", choices=("paper", "elu"),
                            help="'paper' (x above the margin, Eq. 4) or 'elu' (ELU(x - m), the public code)")}))
METHODS.register("otprune", Method(
    lambda metric, r, cfg, layer, depth: otprune(metric, metric.shape[1] - r, gamma=cfg["gamma"], mode=cfg["mode"]),
    drops=lambda cfg: cfg["mode"] == "drop", bipartite=False,
    fields={"gamma": Field((float,), default=1.0, lo=0.0,
                           help="OTPrune kernel scale (K = I + gamma*S*S^T; the paper's code: 0.01)"),
            "mode": Field((str,), default="merge", choices=("drop", "merge"),
                          help="what happens to the tokens not selected: 'merge' (size-weighted into their most similar "
                               "selected token) or 'drop' (the paper)")}))
