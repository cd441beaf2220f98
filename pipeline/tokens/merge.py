"""Token reduction plans. Each method looks at the patch tokens' metric (attention keys averaged over
heads) and returns a function that maps any (B, N, C) tensor onto the reduced (B, N', C) one by *summing*
the tokens that merge; the caller multiplies by token size first and divides after, so the result is the
size-weighted average. N' is fixed by r or k alone, never by the data, so the graph stays static.

Only export-friendly ops are used: argsort/argmax (TopK/ArgMax with constant K), gather, and a one-hot
matmul for the scatter-add (no scatter_reduce, which exports silently wrong, and no ScatterND)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

Merge = Callable[[torch.Tensor], torch.Tensor]


def argsort_desc(v: torch.Tensor) -> torch.Tensor:
    """Descending argsort with ties broken by index. PyTorch's sort and ONNX TopK order equal values
    differently, and identical tokens (flat image regions) tie exactly: ranking by (value, index) first
    makes every key distinct, so both backends take the same decisions."""
    n = v.shape[-1]
    vi, vj = v.unsqueeze(-1), v.unsqueeze(-2)
    earlier = torch.ones(n, n, dtype=torch.bool, device=v.device).tril(-1)
    rank = (vj > vi).sum(-1) + ((vj == vi) & earlier).sum(-1)
    return rank.argsort(dim=-1)


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def add_into(dst: torch.Tensor, src: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """dst[b, idx[b, i]] += src[b, i] as a one-hot matmul (exact: one non-zero term per product)."""
    onehot = (idx.unsqueeze(-1) == torch.arange(dst.shape[1], device=idx.device)).to(src.dtype)  # (B, r, Nd)
    return dst + onehot.transpose(1, 2) @ src


def _best_match(a_idx, b_idx, sim):
    """For each A token (indices into sim), its most similar B token and that similarity."""
    s = sim.gather(1, a_idx.unsqueeze(-1).expand(-1, -1, sim.shape[2]))
    s = s.gather(2, b_idx.unsqueeze(1).expand(-1, s.shape[1], -1))
    return s.max(dim=-1)


def tome(metric: torch.Tensor, r: int) -> Merge:
    """ToMe bipartite soft matching: A = even, B = odd tokens; the r best A->B edges merge."""
    metric = F.normalize(metric, dim=-1)
    a, b = metric[:, ::2], metric[:, 1::2]
    node_max, node_idx = (a @ b.transpose(-1, -2)).max(dim=-1)
    edge_idx = argsort_desc(node_max)
    unm_idx, src_idx = edge_idx[:, r:], edge_idx[:, :r]
    dst_idx = node_idx.gather(1, src_idx)

    def merge(x):
        xa, xb = x[:, ::2], x[:, 1::2]
        return torch.cat([gather_tokens(xa, unm_idx), add_into(xb, gather_tokens(xa, src_idx), dst_idx)], dim=1)

    return merge


def energy(metric: torch.Tensor, margin: float, alpha: float) -> torch.Tensor:
    """PiToMe's energy (Eq. 4): mean over j of f_m(cos(k_i, k_j)), f_m(x) = x above the margin and
    alpha*(exp(x - m) - 1) below. (The public code uses ELU(x - m), i.e. x - m above the margin.)"""
    metric = F.normalize(metric, dim=-1)
    sim = metric @ metric.transpose(-1, -2)
    f = torch.where(sim >= margin, sim, alpha * (torch.exp(sim - margin) - 1))
    return f.mean(dim=-1), sim


def pitome(metric: torch.Tensor, r: int, margin: float = 0.9, alpha: float = 1.0) -> Merge:
    """PiToMe: the 2r highest-energy tokens are mergeable (A/B alternate along the energy order, each A
    merges into its best B); all others are protected."""
    e, sim = energy(metric, margin, alpha)
    order = argsort_desc(e)
    mergeable, protected = order[:, :2 * r], order[:, 2 * r:]
    a_idx, b_idx = mergeable[:, ::2], mergeable[:, 1::2]
    _, dst = _best_match(a_idx, b_idx, sim)

    def merge(x):
        return torch.cat([gather_tokens(x, protected),
                          add_into(gather_tokens(x, b_idx), gather_tokens(x, a_idx), dst)], dim=1)

    return merge


def logdet_select(v: torch.Tensor, k: int, gamma: float = 0.01) -> torch.Tensor:
    """Boolean mask of the chosen tokens. Greedy log-det (DPP MAP) selection of k tokens with incremental Cholesky updates (OTPrune, supp. B):
    K = I + gamma * S S^T, S = V V^T. Vectorised over the batch; the loop over k has a fixed length."""
    B, N, _ = v.shape
    v = F.normalize(v, dim=1)  # columns normalised across tokens
    s = v @ v.transpose(1, 2)
    g = gamma * (s @ s.transpose(1, 2))  # K - I
    d2 = 1.0 + torch.diagonal(g, dim1=1, dim2=2)
    rows = v.new_zeros(B, 0, N)  # Cholesky rows c_t for every token
    taken = torch.zeros(B, N, dtype=torch.bool, device=v.device)
    for t in range(k):
        j = d2.masked_fill(taken, float("-inf")).argmax(dim=-1, keepdim=True)  # (B, 1)
        dj = d2.gather(1, j).clamp_min(1e-12).sqrt()
        kj = g.gather(1, j.unsqueeze(-1).expand(-1, 1, N)).squeeze(1)  # gamma <w_j, w_i>
        if t:  # <c_j, c_i> over the t Cholesky rows so far
            cj = rows.gather(2, j.unsqueeze(1).expand(-1, t, 1))  # (B, t, 1)
            kj = kj - (cj * rows).sum(1)
        e = kj / dj
        rows = torch.cat([rows, e.unsqueeze(1)], dim=1)
        d2 = d2 - e * e
        taken = taken | (torch.arange(N, device=v.device) == j)
    return taken


def otprune(metric: torch.Tensor, k: int, gamma: float = 0.01, mode: str = "drop") -> Merge:
    """OTPrune: keep the k tokens of greatest log-det diversity; drop the rest or merge each into its
    most similar kept token."""
    kept = logdet_select(metric, k, gamma).to(metric.dtype)
    n = metric.shape[1]
    key = kept * (2 * n) + (n - torch.arange(n, device=metric.device, dtype=metric.dtype))  # distinct: no stable sort
    order = key.argsort(dim=-1, descending=True)  # kept first, each part in token order
    keep_idx, drop_idx = order[:, :k], order[:, k:]
    if mode == "drop":
        return lambda x: gather_tokens(x, keep_idx)
    m = F.normalize(metric, dim=-1)
    _, dst = _best_match(drop_idx, keep_idx, m @ m.transpose(-1, -2))
    return lambda x: add_into(gather_tokens(x, keep_idx), gather_tokens(x, drop_idx), dst)
