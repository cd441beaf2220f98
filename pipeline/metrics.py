"""Size, FLOPs and fidelity numbers recorded after every stage."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, input_shape) -> int:
    """FLOPs of one sample (torch's own counter: 2 per multiply-add in conv/matmul)."""
    x = torch.zeros((1, *input_shape[1:]))
    dev = next(model.parameters()).device
    # the math SDPA backend: the fused CPU kernels have no FLOP formula and would count attention as free
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        model(x.to(dev))
    return int(fc.get_total_flops())


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    dev = next(model.parameters()).device
    outs = [model(x[i:i + batch_size].to(dev)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(outs)


def fidelity(ref: torch.Tensor, out: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
    diff = (out - ref).abs()
    res = {
        "max_abs_error": float(diff.max()),
        "mean_abs_error": float(diff.mean()),
        "rel_error": float(diff.max() / ref.abs().max().clamp_min(1e-12)),
        "mean_logit_l2": float((out - ref).norm(dim=-1).mean()),
        "top1_agreement": float((out.argmax(-1) == ref.argmax(-1)).float().mean()),
    }
    if labels is not None:
        res["accuracy"] = float((out.argmax(-1) == labels).float().mean())
    return res
