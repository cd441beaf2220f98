"""The transport mask of one channel group.

P (n x 2) couples the uniform distribution over n channels with the two-point target (drop, keep)
of masses ((n-k)/n, k/n); cost C_ij = (s_i - y_j)^2 with y = (0, 1) and s the normalised scores;
mask = n * P[:, keep]. Each training step is one proximal-point update: the entropic OT plan on the
kernel P_prev * exp(-C/eps), so the effective temperature is eps/t and the masks harden by themselves.

For a two-point target that update has a closed form, which is what the log-domain Sinkhorn sweeps
converge to: every row of the fixed point is a_i (1 - m_i, m_i) with m_i = sigmoid(z_i),

    z_i = z_prev_i + (C_i0 - C_i1) / eps + c = z_prev_i + (2 s_i - 1) / eps + c,

z_prev the previous plan's log-odds and c the one scalar per group with sum(m) = k (the column marginal).
A Sinkhorn sweep only adds a per-column constant to the log-odds, which c then removes exactly, so the
number of sweeps changes neither the masks nor their gradients (tests/test_dtp.py runs the literal
sweeps against this: equal for 1 and 5); they are not computed. The exact c keeps the mask summing to
k at every step and in [0, 1], even where a single sweep alone would stall (see notes/anchors: channels
stuck near 0.75). Gradients reach s directly and, via the implicit function theorem, through c. All
groups are solved in one batched computation on the device with no host synchronisation."""

from __future__ import annotations


import torch
import torch.nn as nn


NEG = -1e30  # padding: exp() is exactly 0 in float64, yet gradients through where() stay finite


class Project(torch.autograd.Function):
    """Per row g, m_g = sigmoid(u_g + c_g) with the scalar c_g that makes sum(m_g) = k_g over the valid entries
    (u = NEG on padding, where m is 0). Forward: Newton's method on c without autograd, warm-started from c0
    (the previous step's c is nearly right; None: cold start), steps clamped for saturated masks, no
    host synchronisation. Backward: the implicit function theorem in closed form, with s' = m (1 - m),
    du = s' (dm - <s', dm> / sum(s')) and dk = <s', dm> / sum(s') (k carries the FLOPs budget's gradient):
    a few kernels, where differentiating through a Newton step took dozens."""

    @staticmethod
    def forward(ctx, u, k, valid, c0, iters):
        if c0 is None:
            n = valid.sum(1)
            c = torch.logit(k / n) - torch.where(valid, u, 0).sum(1) / n
        else:
            c = c0.to(u)
        for _ in range(iters):
            s = torch.sigmoid(u + c[:, None])
            c = c - ((s.sum(1) - k) / (s * (1 - s)).sum(1).clamp_min(1e-12)).clamp(-4.0, 4.0)
        m = torch.sigmoid(u + c[:, None])
        ctx.save_for_backward(m)
        ctx.mark_non_differentiable(c)
        return m, c

    @staticmethod
    def backward(ctx, dm, _dc):
        (m,) = ctx.saved_tensors
        d = m * (1 - m)
        dk = (d * dm).sum(1) / d.sum(1).clamp_min(1e-30)
        return d * (dm - dk[:, None]), dk, None, None, None


class TransportMasks(nn.Module):
    """The masks of all G pruned groups, solved together (padded to the largest group) so a training
    step costs a few dozen kernel launches whatever the number of groups."""

    def __init__(self, sizes: list[int], keeps: list[float], init_scores: list[torch.Tensor], eps: float = 1.0):
        super().__init__()
        self.sizes, self.eps = list(sizes), eps
        G, N = len(sizes), max(sizes)
        valid = torch.arange(N)[None, :] < torch.tensor(sizes)[:, None]
        scores = torch.zeros(G, N)
        for g, sc in enumerate(init_scores):
            scores[g, : sizes[g]] = sc.detach().float()
        self.scores = nn.Parameter(scores)
        self.register_buffer("valid", valid)
        self.register_buffer("keep", torch.tensor(keeps, dtype=torch.float64))
        # the plan's log-odds log P_i1 - log P_i0, starting from the independent coupling a (x) b
        odds = torch.logit(self.keep.clamp(1e-12, 1 - 1e-12))[:, None].expand(G, N)
        self.register_buffer("log_odds", torch.where(valid, odds, 0.0).clone())
        self.register_buffer("current", torch.where(valid, self.keep[:, None], 0.0).float())
        self.register_buffer("shift", torch.zeros(G, dtype=torch.float64))  # warm start, once `warm`
        self.warm = False  # once a step has set `shift`, Newton starts next to the root: 4 steps, not 12
        self.register_buffer("count", valid.sum(1).double(), persistent=False)

    def get_extra_state(self):
        return {"warm": self.warm}

    def set_extra_state(self, state):
        self.warm = bool(state["warm"])

    def normalised_scores(self) -> torch.Tensor:
        s = self.scores.double()
        n = self.count[:, None]
        mean = torch.where(self.valid, s, 0).sum(1, keepdim=True) / n
        var = torch.where(self.valid, (s - mean) ** 2, 0).sum(1, keepdim=True) / (n - 1).clamp_min(1)
        return torch.sigmoid((s - mean) / (var.sqrt() + 1e-8))  # in (0, 1): eps has a fixed meaning

    def forward(self, keep: torch.Tensor | None = None, update: bool = True) -> torch.Tensor:
        """(G, N) soft masks (zero on padding); each training call is one proximal step."""
        keep = (self.keep if keep is None else keep).to(self.log_odds)
        u = torch.where(self.valid, self.log_odds + (2 * self.normalised_scores() - 1) / self.eps, NEG)
        m, c = Project.apply(u, keep * self.count, self.valid, self.shift if self.warm else None, 4 if self.warm else 12)
        if update and self.training:
            self.log_odds.copy_(torch.where(self.valid, u.detach() + c[:, None], 0.0))
            self.shift.copy_(c)
            self.warm = True
        self.current.copy_(m.detach())
        return m.float()

    def hardness(self) -> float:
        m = self.current[self.valid]
        return float((m - m.round()).abs().mean())
