"""The transport mask of one channel group.

P (n x 2) couples the uniform distribution over n channels with the two-point target (drop, keep)
of masses ((n-k)/n, k/n); cost C_ij = (s_i - y_j)^2 with y = (0, 1) and s the normalised scores;
mask = n * P[:, keep]. Each training step is one proximal-point update: Sinkhorn sweeps in the log
domain on the kernel P_prev * exp(-C/eps), warm-started from the previous plan, so the effective
temperature is eps/t and the masks harden by themselves.

For a two-point target the Sinkhorn fixed point has a closed form: rows P_i = a_i (1 - m_i, m_i) with
m_i = sigmoid(u_i + c) and one scalar c with sum(m) = k. Every step ends with that projection, so the
mask sums to k exactly and stays in [0, 1] at every step, even where a single sweep would stall
(see notes/anchors: channels stuck near 0.75). Gradients flow through the sweeps and, via the
implicit function theorem, through c. Everything stays on the device with no host synchronisation."""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def solve_shift(u: torch.Tensor, k, c0: torch.Tensor | None = None, iters: int = 12) -> torch.Tensor:
    """c with sum(sigmoid(u + c)) = k. Newton's method, warm-started (the previous step's c is nearly
    right), steps clamped for saturated masks, no host synchronisation; the last step carries the
    implicit-function gradient dc/du = -sigma' / sum(sigma')."""
    k = torch.as_tensor(k, dtype=u.dtype, device=u.device)
    with torch.no_grad():
        cold = torch.logit(k / u.numel()) - u.mean()
        c = cold if c0 is None else torch.where(torch.isnan(c0), cold, c0.to(u))
        for _ in range(iters):
            s = torch.sigmoid(u + c)
            c = c - ((s.sum() - k) / (s * (1 - s)).sum().clamp_min(1e-12)).clamp(-4.0, 4.0)
    s = torch.sigmoid(u + c)
    return c - (s.sum() - k) / (s * (1 - s)).sum().clamp_min(1e-30)


class TransportMask(nn.Module):
    def __init__(self, n: int, keep: float, init_scores: torch.Tensor, eps: float = 1.0, iters: int = 1):
        super().__init__()
        self.n, self.eps, self.iters = n, eps, iters
        self.keep = keep  # fraction kept (a float, or replaced by a budget's learned ratio)
        self.scores = nn.Parameter(init_scores.detach().clone().float())
        la = -math.log(n)
        lb = torch.tensor([math.log(max(1 - keep, 1e-12)), math.log(max(keep, 1e-12))], dtype=torch.float64)
        self.register_buffer("log_plan", (la + lb).expand(n, 2).clone())  # independent coupling a (x) b
        self.register_buffer("current", torch.full((n,), float(keep)))
        self.register_buffer("shift", torch.full((), float("nan"), dtype=torch.float64))  # last dual shift (warm start)

    def normalised_scores(self) -> torch.Tensor:
        s = self.scores.double()
        return torch.sigmoid((s - s.mean()) / (s.std() + 1e-8))  # in (0, 1): eps has a fixed meaning

    def forward(self, keep: torch.Tensor | float | None = None, update: bool = True) -> torch.Tensor:
        keep = self.keep if keep is None else keep
        sh = self.normalised_scores()
        kept = (keep * self.n if torch.is_tensor(keep) else torch.tensor(keep * self.n)).to(sh.device, torch.float64)
        y = torch.tensor([0.0, 1.0], dtype=torch.float64, device=sh.device)
        cost = (sh[:, None] - y[None, :]) ** 2
        logk = self.log_plan - cost / self.eps
        log_a = torch.full((self.n,), -math.log(self.n), dtype=torch.float64, device=sh.device)
        frac = (kept / self.n).clamp(1e-9, 1 - 1e-9)
        log_b = torch.stack([torch.log1p(-frac), torch.log(frac)])
        g = torch.zeros(2, dtype=torch.float64, device=sh.device)
        for _ in range(self.iters):
            f = log_a - torch.logsumexp(logk + g, dim=1)
            g = log_b - torch.logsumexp(logk + f[:, None], dim=0)
        u = (logk[:, 1] + g[1]) - (logk[:, 0] + g[0])
        c = solve_shift(u, kept, self.shift)
        z = u + c
        m = torch.sigmoid(z)
        if update and self.training:
            plan = log_a[:, None] + torch.stack([nn.functional.logsigmoid(-z), nn.functional.logsigmoid(z)], dim=1)
            self.log_plan.copy_(plan.detach())
            self.shift.copy_(c.detach())
        self.current.copy_(m.detach().float())
        return m.float()

    def hardness(self) -> float:
        m = self.current
        return float((m - m.round()).abs().mean())

    def hard(self, k: int) -> torch.Tensor:
        """The kept channels: top-k of the soft mask."""
        return torch.argsort(self.current, descending=True)[:k].sort().values
