"""Size, FLOPs and the outputs every measurement reads (what they mean is otcompress.tasks' business)."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from .outputs import flatten


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
def predict_outputs(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Every output (flattened, named) on x, in batches, as float32 on the CPU."""
    dev = next(model.parameters()).device
    parts = [{k: v.float().cpu() for k, v in flatten(model(x[i:i + batch_size].to(dev))).items()}
             for i in range(0, len(x), batch_size)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The model's only output (a classifier's logits) on x."""
    outs = predict_outputs(model, x, batch_size)
    if len(outs) != 1:
        raise ValueError(f"predict() reads a single output; the model has {list(outs)}")
    return next(iter(outs.values()))
