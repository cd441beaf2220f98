"""Where DTP's masks act and the network that carries them while they learn: every group's mask multiplies its
channels at its mask points (after BatchNorm where there is one), one proximal step per training forward."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..channels.groups import Group, Slice, is_depthwise
from .masks import TransportMasks


def mask_points(model: nn.Module, g: Group) -> list[Slice]:
    """Where a group's mask multiplies its channels: after BN (after the last depthwise conv's BN in
    inverted residuals, so the channel reaching the consumer is really scaled), else the producers. A
    point is a slice: its positions are the group's channels in that layer (a BN after a concat holds
    several groups' channels)."""
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    bns = [s for s in g.slices if isinstance(s.module, nn.modules.batchnorm._BatchNorm) and s.index.shape[1] == 1]
    dws = [s for s in g.slices if is_depthwise(s.module)]
    if bns:
        last_dw = max((order[s.name] for s in dws), default=-1)
        pts = [s for s in bns if order[s.name] > last_dw] or bns
    else:
        pts = dws[-1:] if dws else [s for s in g.slices if s.role == "out"]
    return pts


def _affine_bn(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine


class MaskedNet(nn.Module):
    """The net plus its masks (and budget logits): one module, so DDP and checkpoints see everything.
    Each training forward takes one proximal step for all masks and gathers every mask point's channels
    at once. At an affine BatchNorm, BN(x; w m, b m) = m BN(x; w, b): the masked affine parameters of all
    such points come from two multiplies and are swapped in with functional_call, a handful of small
    kernels per step instead of an activation-sized multiply and its two backward passes at each point.
    Other points (producers without BN) scale their output in a forward hook that reads `live`."""

    def __init__(self, net: nn.Module, masks: TransportMasks, theta: nn.Parameter | None):
        super().__init__()
        self.net, self.masks = net, masks
        self.theta = nn.ParameterList([theta]) if theta is not None else None
        self.live: tuple[torch.Tensor, ...] = ()  # the hooked points' masks, in hook order
        self._bns: list[tuple[str, nn.Module]] = []
        self._bn_sizes: list[int] = []
        self._hook_sizes: list[int] = []

    def compute(self) -> torch.Tensor:
        """(G, N) masks; one proximal step when training."""
        ks = torch.sigmoid(self.theta[0].double()) if self.theta is not None else None
        return self.masks(keep=ks, update=self.training)

    def forward(self, x):
        flat = self.compute().flatten()
        m = torch.cat([flat, flat.new_ones(1)]).index_select(0, self.point_index)  # every point's channels, BN points first
        if self._hook_sizes:
            amp = x.is_cuda and torch.is_autocast_enabled("cuda")
            bn_m, hook_m = m.split([sum(self._bn_sizes), sum(self._hook_sizes)])
            self.live = hook_m.to(torch.get_autocast_dtype("cuda") if amp else x.dtype).split(self._hook_sizes)
        else:
            bn_m = m  # (slicing would add a backward kernel per step)
        if not self._bns:
            return self.net(x)
        w = torch.cat([bn.weight for _, bn in self._bns]) * bn_m
        b = torch.cat([bn.bias for _, bn in self._bns]) * bn_m
        params = {f"{name}.{kind}": t for kind, ts in (("weight", w.split(self._bn_sizes)), ("bias", b.split(self._bn_sizes)))
                  for (name, _), t in zip(self._bns, ts)}
        return torch.func.functional_call(self.net, params, (x,))

    def attach(self, points: list[list[Slice]]) -> list:
        """Mask group j's channels at each of its points; returns the handles of the hooks it needed. Every
        masked layer gets one index over its channels into [all masks, 1]: channels of other groups (a BN
        after a concat) read the constant 1."""
        G, N = self.masks.valid.shape
        per: dict[str, tuple[nn.Module, torch.Tensor]] = {}
        for j, pts in enumerate(points):
            for s in pts:
                size = s.module.weight.shape[0]
                mod, idx = per.setdefault(s.name, (s.module, torch.full((size,), G * N, dtype=torch.long)))
                idx[s.index[:, 0]] = j * N + torch.arange(s.index.shape[0])
        bns = [(name, m, idx) for name, (m, idx) in per.items() if _affine_bn(m)]
        hooked = [(name, m, idx) for name, (m, idx) in per.items() if not _affine_bn(m)]
        self._bns = [(name, m) for name, m, _ in bns]
        self._bn_sizes = [len(idx) for *_, idx in bns]
        self._hook_sizes = [len(idx) for *_, idx in hooked]
        self.register_buffer("point_index", torch.cat([idx for *_, idx in bns + hooked]), persistent=False)

        def hook(i, last):
            def scale(mod, inp, out):  # channels on dim 1 (convs) or last (linear layers)
                m = self.live[i]
                return out * (m if last else m.view(1, -1, *([1] * (out.dim() - 2))))
            return scale

        return [m.register_forward_hook(hook(i, isinstance(m, nn.Linear))) for i, (_, m, _) in enumerate(hooked)]
