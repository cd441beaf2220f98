"""Channel importance aggregated over a group's layers: each layer's per-channel score is divided by
its mean (so wide and narrow layers weigh alike), then averaged, as Torch-Pruning and Intra-Fusion do."""

from __future__ import annotations

import torch

from .errors import OTCError
from .groups import Group, Slice


def channel_values(s: Slice, t: torch.Tensor) -> torch.Tensor:
    """(n, d) view of tensor t restricted to the slice's channels (rows for out/channel, columns for in)."""
    n = s.index.shape[0]
    if s.role == "in":
        cols = t[:, s.index.flatten()]  # (out, n*r, ...)
        return cols.reshape(t.shape[0], n, -1, *t.shape[2:]).transpose(0, 1).reshape(n, -1)
    return t[s.index.flatten()].reshape(n, -1)


def _weights(s: Slice):
    yield s.module.weight
    if s.role != "in" and getattr(s.module, "bias", None) is not None:
        yield s.module.bias


def group_importance(g: Group, kind: str, grads: dict | None = None) -> torch.Tensor:
    scores = []
    for s in g.slices:
        w = s.module.weight
        if w is None:
            continue
        if kind == "bn_scale":
            if isinstance(s.module, torch.nn.modules.batchnorm._BatchNorm):
                scores.append(channel_values(s, w.detach()).abs().sum(1))
            continue
        if kind in ("l1", "l2"):
            v = channel_values(s, w.detach())
            sc = v.abs().sum(1) if kind == "l1" else v.pow(2).sum(1).sqrt()
        elif kind == "taylor":
            if grads is None or w not in grads:
                raise OTCError("importance = 'taylor' needs gradients; give [data].eval or [data].train")
            sc = channel_values(s, (w.detach() * grads[w]).abs()).sum(1)
        else:
            raise OTCError(f"unknown importance {kind!r}")
        scores.append(sc)
    if not scores:
        raise OTCError(f"group {g.root}: importance = {kind!r} found nothing to score"
                       + (" (no BatchNorm left: use it before fold_bn, or choose l1/l2)" if kind == "bn_scale" else ""))
    normed = [s / s.mean().clamp_min(1e-12) for s in scores]
    return torch.stack(normed).mean(0)


def taylor_grads(model, x, y) -> dict:
    """|w * dL/dw| saliency needs one backward pass over a few labelled (or self-labelled) batches."""
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for i in range(0, len(x), 64):
            out = model(x[i:i + 64])
            target = y[i:i + 64] if y is not None else out.argmax(-1).detach()
            torch.nn.functional.cross_entropy(out, target, reduction="sum").backward()
    grads = {p: p.grad.detach().clone() / len(x) for p in model.parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads
