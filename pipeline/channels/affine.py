"""Folding a per-output-channel affine map y -> y * scale + shift into the layer that produces y (its weight
rows and bias): what BatchNorm folding, the repair's statistics matching and DTP's learned masks all do."""

from __future__ import annotations

import torch
import torch.nn as nn


@torch.no_grad()
def fold_affine(layer: nn.Module, scale: torch.Tensor, shift: torch.Tensor | None = None,
                rows: torch.Tensor | None = None) -> None:
    """In place: the layer's outputs become outputs * scale + shift, per output channel.

    Args:
        layer: a conv, linear or norm layer with `weight` (output channels along dim 0) and optional `bias`
            (created where a shift needs one).
        scale: one factor per output channel (or per entry of `rows`).
        shift: one offset per output channel (default none).
        rows: only these output channels (default all).
    """
    w = layer.weight
    idx = slice(None) if rows is None else rows
    w[idx] *= scale.view((-1,) + (1,) * (w.dim() - 1)).to(w)
    if layer.bias is None:
        if shift is None:
            return
        layer.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
    b = layer.bias
    b[idx] *= scale.to(b)
    if shift is not None:
        b[idx] += shift.to(b)
