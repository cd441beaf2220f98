"""Repair a shrunk network with a few hundred unlabeled calibration images, no gradient steps, every
correction folded into the weights (the exported graph gains no node).

One forward pass of the calibration batch through the compressed model, layer by layer in execution
order, each layer corrected before the next one sees its output:

* BatchNorm layers still present re-estimate their statistics (adaptive BN, EagleEye).
* Every other conv/linear matches its per-channel output statistics to the original's (REPAIR, Jordan et
  al. 2022): a kept channel to its own, a fused channel to the fusion-weighted mean of its sources' means
  and standard deviations, the variance that averaging neurons loses put back. y' = (y - mu) s/sigma + mu*
  folds into the layer as a row scale and a bias.
* Optionally, where it pays, a layer that reads shrunk channels is reconstructed by least squares on
  calibration activations (Channel Pruning, He et al. 2017; ThiNet): W' = argmin |W' X' - Y|^2 (ridge), X'
  the compressed model's inputs to it, Y the original's outputs at sampled positions. It is kept only if
  it lowers the error on held-out positions.

The original is measured as the run's untouched model, folded like the compressed one where fold_bn ran."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..progress import bar as progress_bar
from .affine import fold_affine
from .fold_bn import fold_batchnorm, folded_layers

LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
# the defaults of the repair's options, defined once (the repair stage's keys read them)
DEFAULTS = {"samples": 512, "statistics": True, "reconstruct": "auto", "positions": 16, "seed": 0}


def _channel_dim(m: nn.Module, y: torch.Tensor) -> int:
    return y.dim() - 1 if isinstance(m, nn.Linear) else 1


def _stats(m: nn.Module, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d = _channel_dim(m, y)
    flat = y.detach().double().movedim(d, 0).reshape(y.shape[d], -1)
    return flat.mean(1), flat.std(1)


@dataclass
class Sampler:
    """Fixed output positions per image, shared by the original and the compressed model."""

    positions: int = 16
    seed: int = 0

    def pick(self, shape: tuple) -> torch.Tensor:
        n, spatial = shape[0], int(torch.tensor(shape[2:]).prod()) if len(shape) > 2 else 1
        g = torch.Generator().manual_seed(self.seed)
        k = min(self.positions, spatial)
        return torch.stack([torch.randperm(spatial, generator=g)[:k] for _ in range(n)])  # (n, k)


def _rows(t: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
    """(n*k, C) rows of a channels-last tensor (n, ..., C) at the picked positions of its middle axes."""
    t = t.detach().double()
    if t.dim() == 2:
        return t
    flat = t.reshape(t.shape[0], -1, t.shape[-1])  # (n, L, C)
    return flat.gather(1, pick[:, :, None].expand(-1, -1, flat.shape[-1])).reshape(-1, flat.shape[-1])


def _pick_shape(m: nn.Module, y: torch.Tensor) -> tuple:
    """The shape whose positions are sampled: channels-last tensors are (n, ..., C)."""
    return (y.shape[0], y.shape[-1], *y.shape[1:-1]) if isinstance(m, nn.Linear) else tuple(y.shape)


def _targets(m: nn.Module, y: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
    """(n*k, C) outputs at the picked positions."""
    if isinstance(m, nn.Linear):
        return _rows(y, pick)
    return _rows(y.flatten(2).transpose(1, 2), pick)


def _inputs(m: nn.Module, x: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
    """(n*k, C_in*kh*kw + 1) input patches producing the picked outputs, with a ones column for the bias."""
    if isinstance(m, nn.Linear):
        cols = _rows(x, pick)
    else:
        patches = F.unfold(x.detach().double(), m.kernel_size, m.dilation, m.padding, m.stride)  # (n, D, L)
        cols = patches.gather(2, pick[:, None, :].expand(-1, patches.shape[1], -1)).transpose(1, 2).reshape(-1, patches.shape[1])
    return torch.cat([cols, cols.new_ones(cols.shape[0], 1)], 1)


def _mapped(maps: dict, name: str, ref: torch.Tensor, width: int) -> torch.Tensor | None:
    """The original's values for this layer's current outputs: through the layer's channel map, or as they
    are when its outputs did not change."""
    m = maps.get(name)
    if m is not None and m.shape == (width, ref.shape[-1]):
        return ref @ m.double().T
    return ref if ref.shape[-1] == width else None


def repair(model: nn.Module, original: nn.Module, x: torch.Tensor, maps: dict[str, torch.Tensor], *,
           stats: bool = DEFAULTS["statistics"], reconstruct: str = DEFAULTS["reconstruct"],
           positions: int = DEFAULTS["positions"], skip: tuple[str, ...] = (), progress: bool = True) -> dict:
    """Repair `model` in place from calibration images x (one batch).

    Args:
        original: the uncompressed network at the same points (see `reference`).
        maps: per shrunk layer, how its new outputs combine the original's (Context.channel_maps).
        stats: match per-channel output statistics. reconstruct: "auto" (least squares where it lowers held-out
        error), "always" or "never". positions: output positions per image sampled for the refit.
        skip: layer names left alone.

    Returns: what was done per layer, the BatchNorms re-estimated and the samples used."""
    model.eval()
    sampler = Sampler(positions)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, LAYERS) and n not in skip}
    before_bn = folded_layers(model, x[:1])  # their BatchNorm re-estimates instead
    ref_mods = dict(original.named_modules())
    ref: dict[str, dict] = {}

    def ref_hook(name):
        def hook(mod, inp, out):
            mean, std = _stats(mod, out)
            rec = {"mean": mean, "std": std}
            if reconstruct != "never":
                rec["pick"] = sampler.pick(_pick_shape(mod, out))
                rec["y"] = _targets(mod, out, rec["pick"])
            ref[name] = rec
        return hook

    handles = [ref_mods[n].register_forward_hook(ref_hook(n)) for n in layers if n in ref_mods]
    try:
        with torch.no_grad():
            original.eval()(x)
    finally:
        for h in handles:
            h.remove()

    done: dict[str, str] = {}
    bar = progress_bar(total=len(layers), desc="repair", enabled=progress)

    def pre(name):
        def hook(mod, inp):
            r = ref.get(name)
            if r is None or "y" not in r or isinstance(mod, nn.Conv2d) and mod.groups > 1:
                return None
            target = _mapped(maps, name, r["y"], mod.weight.shape[0])
            if target is None:
                return None
            if _least_squares(mod, inp[0], r["pick"], target, reconstruct):
                done[name] = "least squares"
            return None
        return hook

    def post(name):
        def hook(mod, inp, out):
            bar.update(1)
            r = ref.get(name)
            if not stats or r is None or name in done or name in before_bn:
                return None
            width = out.shape[_channel_dim(mod, out)]
            mean_t = _mapped(maps, name, r["mean"][None], width)
            std_t = _mapped(maps, name, r["std"][None], width)
            if mean_t is None:
                return None
            mean_c, std_c = _stats(mod, out)
            scale = (std_t[0] / std_c.clamp_min(1e-8)).clamp(0.1, 10.0)
            shift = mean_t[0] - mean_c * scale
            fold_affine(mod, scale, shift)
            done[name] = "statistics"
            d = _channel_dim(mod, out)
            shape = [1] * out.dim()
            shape[d] = -1
            return out * scale.view(shape).to(out) + shift.view(shape).to(out)
        return hook

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:  # adaptive BN: statistics of the compressed network's own activations
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    handles = [h for n, m in layers.items() for h in (m.register_forward_pre_hook(pre(n)), m.register_forward_hook(post(n)))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        for bn in bns:
            bn.eval()
        bar.close()
    return {"layers": done, "batchnorm_reestimated": len(bns), "samples": len(x)}


def _least_squares(mod: nn.Module, x: torch.Tensor, pick: torch.Tensor, target: torch.Tensor, mode: str) -> bool:
    """Refit the layer to the original's outputs by ridge regression on 80% of the sampled positions; True
    if kept (it lowered the error on the other 20% by 5% or more, or mode = always)."""
    X = _inputs(mod, x, pick)
    w = mod.weight.detach().double().reshape(mod.weight.shape[0], -1)
    b = mod.bias.detach().double() if mod.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    W = torch.cat([w, b[:, None]], 1)  # current weights, same layout as X
    cut = int(0.8 * X.shape[0])
    fit, chk = slice(0, cut), slice(cut, None)
    gram = X[fit].T @ X[fit]
    lam = 1e-3 * gram.diagonal().mean().clamp_min(1e-12)
    W_ls = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype), X[fit].T @ target[fit]).T
    before = (X[chk] @ W.T - target[chk]).pow(2).mean()
    after = (X[chk] @ W_ls.T - target[chk]).pow(2).mean()
    if mode != "always" and not after < 0.95 * before:
        return False
    with torch.no_grad():
        mod.weight.copy_(W_ls[:, :-1].reshape(mod.weight.shape).to(mod.weight))
        if mod.bias is None:
            mod.bias = nn.Parameter(W_ls[:, -1].to(mod.weight))
        else:
            mod.bias.copy_(W_ls[:, -1].to(mod.bias))
    return True


def reference(original: nn.Module, folded: bool, example: torch.Tensor) -> nn.Module:
    """The original network at the same points as the compressed one (folded where fold_bn ran)."""
    ref = copy.deepcopy(original)
    if folded:
        fold_batchnorm(ref, example)
    return ref.eval()
