"""The transport mask of one channel group.

P (n x 2) couples the uniform distribution over n channels with the two-point target (drop, keep)
of masses ((n-k)/n, k/n); cost C_ij = (s_i - y_j)^2 with y = (0, 1) and s the normalised scores;
mask = n * P[:, keep]. Each training step is one proximal-point update: Sinkhorn sweeps in the log
domain on the kernel P_prev * exp(-C/eps), warm-started from the previous plan, so the effective
temperature is eps/t and the masks harden by themselves.

All groups are solved in one batched computation. For a two-point target the Sinkhorn fixed point has a closed form: rows P_i = a_i (1 - m_i, m_i) with
m_i = sigmoid(u_i + c) and one scalar c with sum(m) = k. Every step ends with that projection, so the
mask sums to k exactly and stays in [0, 1] at every step, even where a single sweep would stall
(see notes/anchors: channels stuck near 0.75). Gradients flow through the sweeps and, via the
implicit function theorem, through c. Everything stays on the device with no host synchronisation."""

from __future__ import annotations


import torch
import torch.nn as nn


NEG = -1e30  # padding: exp() is exactly 0 in float64, yet gradients through where() stay finite


def solve_shift(u: torch.Tensor, k: torch.Tensor, valid: torch.Tensor, c0: torch.Tensor | None = None,
                iters: int = 12) -> torch.Tensor:
    """Per row g, c_g with sum_i sigmoid(u_gi + c_g) = k_g over the valid entries (u = NEG on padding). Newton's method,
    warm-started (the previous step's c is nearly right), steps clamped for saturated masks, no host
    synchronisation; the last step carries the implicit-function gradient dc/du = -sigma' / sum(sigma')."""
    with torch.no_grad():
        n = valid.sum(1)
        cold = torch.logit(k / n) - torch.where(valid, u, 0).sum(1) / n
        c = cold if c0 is None else torch.where(torch.isnan(c0), cold, c0.to(u))
        for _ in range(iters):
            s = torch.sigmoid(u + c[:, None])
            c = c - ((s.sum(1) - k) / (s * (1 - s)).sum(1).clamp_min(1e-12)).clamp(-4.0, 4.0)
    s = torch.sigmoid(u + c[:, None])
    return c - (s.sum(1) - k) / (s * (1 - s)).sum(1).clamp_min(1e-30)


class TransportMasks(nn.Module):
    """The masks of all G pruned groups, solved together (padded to the largest group) so a training
    step costs a few dozen kernel launches whatever the number of groups."""

    def __init__(self, sizes: list[int], keeps: list[float], init_scores: list[torch.Tensor], eps: float = 1.0,
                 iters: int = 1):
        super().__init__()
        self.sizes, self.eps, self.iters = list(sizes), eps, iters
        G, N = len(sizes), max(sizes)
        valid = torch.arange(N)[None, :] < torch.tensor(sizes)[:, None]
        scores = torch.zeros(G, N)
        for g, sc in enumerate(init_scores):
            scores[g, : sizes[g]] = sc.detach().float()
        self.scores = nn.Parameter(scores)
        self.register_buffer("valid", valid)
        self.register_buffer("keep", torch.tensor(keeps, dtype=torch.float64))
        n = torch.tensor(sizes, dtype=torch.float64)[:, None]
        lb = torch.stack([torch.log1p(-self.keep.clamp(max=1 - 1e-12)), torch.log(self.keep.clamp(min=1e-12))], dim=1)
        plan = (-torch.log(n))[:, :, None] + lb[:, None, :]  # independent coupling a (x) b
        self.register_buffer("log_plan", plan.expand(G, N, 2).clone())
        self.register_buffer("current", torch.where(valid, self.keep[:, None], 0.0).float())
        self.register_buffer("shift", torch.full((G,), float("nan"), dtype=torch.float64))  # warm start
        self.warm = False  # once a step has set `shift`, Newton starts next to the root: 3 steps, not 12
        offsets = torch.arange(G)[:, None] * N + torch.arange(N)[None, :]
        self.register_buffer("flat_index", offsets[valid], persistent=False)

    def get_extra_state(self):
        return {"warm": self.warm}

    def set_extra_state(self, state):
        self.warm = bool(state["warm"])

    def per_group(self, m: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """Group g's mask as its own (n_g,) tensor: one gather and one split, whose backward is a single
        concatenation (slicing the padded rows one by one would cost G zero-filled gradients per step)."""
        return torch.split(m.flatten().index_select(0, self.flat_index).to(dtype), self.sizes)

    def normalised_scores(self) -> torch.Tensor:
        s = self.scores.double()
        n = self.valid.sum(1, keepdim=True)
        mean = torch.where(self.valid, s, 0).sum(1, keepdim=True) / n
        var = torch.where(self.valid, (s - mean) ** 2, 0).sum(1, keepdim=True) / (n - 1).clamp_min(1)
        return torch.sigmoid((s - mean) / (var.sqrt() + 1e-8))  # in (0, 1): eps has a fixed meaning

    def forward(self, keep: torch.Tensor | None = None, update: bool = True) -> torch.Tensor:
        """(G, N) soft masks (zero on padding); each training call is one proximal step."""
        keep = (self.keep if keep is None else keep).to(self.log_plan)
        sh = self.normalised_scores()
        y = torch.tensor([0.0, 1.0], dtype=torch.float64, device=sh.device)
        ninf = torch.tensor(NEG, dtype=torch.float64, device=sh.device)
        logk = torch.where(self.valid[..., None], self.log_plan - (sh[..., None] - y) ** 2 / self.eps, ninf)
        n = self.valid.sum(1).to(torch.float64)
        log_a = torch.where(self.valid, -torch.log(n)[:, None], ninf)
        frac = keep.clamp(1e-9, 1 - 1e-9)
        log_b = torch.stack([torch.log1p(-frac), torch.log(frac)], dim=1)  # (G, 2)
        g = torch.zeros_like(log_b)
        for _ in range(self.iters):  # log-domain Sinkhorn sweeps on the kernel P_prev * exp(-C/eps)
            f = torch.where(self.valid, log_a - torch.logsumexp(logk + g[:, None, :], dim=2), 0.0)
            g = log_b - torch.logsumexp(logk + f[..., None], dim=1)
        u = torch.where(self.valid, (logk[..., 1] + g[:, None, 1]) - (logk[..., 0] + g[:, None, 0]), ninf)
        c = solve_shift(u, keep * n, self.valid, self.shift, iters=3 if self.warm else 12)
        z = u + c[:, None]
        m = torch.sigmoid(z)
        if update and self.training:
            plan = log_a[..., None] + torch.stack([nn.functional.logsigmoid(-z), nn.functional.logsigmoid(z)], dim=-1)
            self.log_plan.copy_(torch.where(self.valid[..., None], plan, self.log_plan).detach())
            self.shift.copy_(c.detach())
            self.warm = True
        self.current.copy_(m.detach().float())
        return m.float()

    def hardness(self) -> float:
        m = self.current[self.valid]
        return float((m - m.round()).abs().mean())

    def hard(self, g: int, k: int) -> torch.Tensor:
        """Group g's kept channels: top-k of its soft mask."""
        return torch.argsort(self.current[g, : self.sizes[g]], descending=True)[:k].sort().values
