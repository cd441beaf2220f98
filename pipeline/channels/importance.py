"""Channel importance criteria, interchangeable as in Torch-Pruning: each is a class in IMPORTANCE. A
criterion scores every layer of a group per channel; the scores are divided by their mean (so wide and
narrow layers weigh alike) and averaged, as Torch-Pruning and Intra-Fusion do."""

from __future__ import annotations

import torch

from ..errors import OTCError
from ..registry import Registry
from .groups import Group, Slice

IMPORTANCE = Registry("importance criterion")
DEFAULT_IMPORTANCE = "l1"


def _grouped(s: Slice, t: torch.Tensor, pos: torch.Tensor):
    """A grouped conv's weight entries of input positions `pos`: (rows of the position's group, its column)."""
    per, rows = t.shape[1], t.shape[0] // s.groups
    r = (pos // per)[:, None] * rows + torch.arange(rows)
    return r, (pos % per)[:, None].expand_as(r)


def channel_values(s: Slice, t: torch.Tensor) -> torch.Tensor:
    """(n, d) values of tensor t for the slice's channels: rows for producers and per-channel layers, columns
    for consumers, (group rows, column) entries for grouped-conv consumers."""
    n = s.index.shape[0]
    pos = s.index.flatten()
    if s.role == "in":
        t = t.movedim(s.dim % t.dim(), 1)  # consumer columns: dim 1 (dim 0 of a transposed conv's weight)
        cols = t[:, pos]  # (out, n*r, ...)
        return cols.reshape(t.shape[0], n, -1, *t.shape[2:]).transpose(0, 1).reshape(n, -1)
    if s.role == "gin":
        rows, cols = _grouped(s, t, pos)
        return t[rows, cols].reshape(n, -1)
    return t.movedim(s.dim % t.dim(), 0)[pos].reshape(n, -1)


def write_values(s: Slice, t: torch.Tensor, pos: torch.Tensor, values: torch.Tensor) -> None:
    """The inverse of channel_values for the positions `pos` (k*r of them, in channel order): values (k, d)."""
    with torch.no_grad():
        if s.role == "in":
            t = t.movedim(s.dim % t.dim(), 1)  # a view: writes land in the tensor
            k = len(pos) // s.index.shape[1]
            shaped = values.reshape(k, t.shape[0], s.index.shape[1], *t.shape[2:]).transpose(0, 1)
            t[:, pos] = shaped.reshape(t.shape[0], len(pos), *t.shape[2:]).to(t.dtype)
        elif s.role == "gin":
            rows, cols = _grouped(s, t, pos)
            t[rows, cols] = values.reshape(rows.shape[0], rows.shape[1], *t.shape[2:]).to(t.dtype)
        else:
            moved = t.movedim(s.dim % t.dim(), 0)
            moved[pos] = values.reshape(len(pos), *moved.shape[1:]).to(t.dtype)


class Importance:
    """Scores the channels of a group (higher = keep). `needs_data`: the criterion reads gradients or
    activations, so the stage needs [data]; `prepare` runs once per shrink, before any group is scored."""

    name = "importance"
    needs_data = False
    calibration = False  # True: the data are unlabeled calibration images ([data].calib), not [data].train/eval

    def prepare(self, model: torch.nn.Module, data) -> None:
        pass

    def layer_scores(self, s: Slice) -> torch.Tensor | None:
        raise NotImplementedError

    def __call__(self, g: Group) -> torch.Tensor:
        scores = [sc for s in g.slices if not s.constraint and getattr(s.module, "weight", None) is not None
                  and bool((s.index >= 0).all()) for sc in [self.layer_scores(s)] if sc is not None]
        if not scores:
            raise OTCError(f"group {g.root}: importance = {self.name!r} found nothing to score" + self.why_empty)
        normed = [s.double() / s.double().mean().clamp_min(1e-12) for s in scores]
        return torch.stack(normed).mean(0)

    why_empty = ""


@IMPORTANCE.register("l1")
class L1(Importance):
    name = "l1"
    """Sum of |w| over each channel's weights (rows of producers, columns of consumers)."""

    def layer_scores(self, s):
        return channel_values(s, s.module.weight.detach()).abs().sum(1)


@IMPORTANCE.register("l2")
class L2(Importance):
    name = "l2"
    def layer_scores(self, s):
        return channel_values(s, s.module.weight.detach()).pow(2).sum(1).sqrt()


@IMPORTANCE.register("bn_scale")
class BNScale(Importance):
    name = "bn_scale"
    """|gamma| of the group's BatchNorm (network slimming); only before fold_bn."""

    why_empty = " (no BatchNorm left: use it before fold_bn, or choose l1/l2)"

    def layer_scores(self, s):
        if isinstance(s.module, torch.nn.modules.batchnorm._BatchNorm):
            return channel_values(s, s.module.weight.detach()).abs().sum(1)
        return None


@IMPORTANCE.register("taylor")
class Taylor(Importance):
    name = "taylor"
    """|w * dL/dw| summed per channel (first-order Taylor saliency), from one backward pass over a few
    labelled (or self-labelled) batches."""

    needs_data = True

    def __init__(self):
        self.grads: dict | None = None

    def prepare(self, model, data):
        if data is None:
            raise OTCError("importance = 'taylor' needs gradients; give [data].eval or [data].train")
        x, y = data
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            for i in range(0, len(x), 64):
                out = model(x[i:i + 64])
                target = y[i:i + 64] if y is not None else out.argmax(-1).detach()
                torch.nn.functional.cross_entropy(out, target, reduction="sum").backward()
        self.grads = {p: p.grad.detach().clone() / len(x) for p in model.parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)

    def layer_scores(self, s):
        w = s.module.weight
        if self.grads is None or w not in self.grads:
            return None
        return channel_values(s, (w.detach() * self.grads[w]).abs()).sum(1)


@IMPORTANCE.register("reconstruction")
class Reconstruction(Importance):
    """The channels the others are best rebuilt from: greedy column-subset selection (pivoted QR, each next
    channel the one the chosen ones reconstruct worst) on the inputs of every dense layer that reads the group,
    sampled on calibration images, each channel's column weighted by its weights' norm in that layer. These are
    the inputs from which a least-squares refit of the consumers (repair's) recovers their outputs best (ThiNet,
    Luo et al. 2017; CURL). A channel's score is its pivot's residual norm |R_kk| over the group's total, so it
    falls in the order taken. Groups read only by grouped convolutions or through a flatten are scored by l1."""

    name = "reconstruction"
    needs_data = True
    calibration = True  # reads unlabeled calibration images, not labels or gradients

    def prepare(self, model, data):
        if data is None:
            raise OTCError("importance = 'reconstruction' reads calibration images: give [data].calib (or [data].train)")
        from .sensitivity import input_stats

        dense = [m for m in model.modules() if isinstance(m, torch.nn.Linear)
                 or (isinstance(m, torch.nn.modules.conv._ConvNd) and m.groups == 1)]
        with torch.no_grad():
            self.rows = {m: v["rows"] for m, v in input_stats(model, dense, data[0], dtype=torch.float32)[1].items()}

    def __call__(self, g):
        blocks = []
        for s in g.slices:
            if s.role != "in" or s.module not in self.rows or s.index.shape[1] != 1 or bool((s.index < 0).any()):
                continue
            weight = channel_values(s, s.module.weight.detach()).double().norm(dim=1)
            x = self.rows[s.module][:, s.index[:, 0]].double()
            blocks.append((x - x.mean(0)) * weight)  # centred: the refit's bias absorbs what is constant
        if not blocks:
            return L1()(g)
        import scipy.linalg

        m = torch.cat(blocks).numpy()
        r, piv = scipy.linalg.qr(m, mode="r", pivoting=True)
        diag = torch.zeros(g.n, dtype=torch.float64)
        k = min(r.shape)
        diag[torch.as_tensor(piv[:k].copy())] = torch.as_tensor(abs(r.diagonal()[:k]).copy())
        return diag / max(float(torch.linalg.norm(torch.as_tensor(m))), 1e-30)


def criterion(name: str) -> Importance:
    return IMPORTANCE[name]()
