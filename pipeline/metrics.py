"""Size, FLOPs and fidelity numbers recorded after every stage."""

from __future__ import annotations

import numpy as np
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


def fidelity(ref, out, labels=None) -> dict:
    """Compressed logits `out` against the original's `ref` (tensors or arrays): errors, top-1 agreement
    and, with labels, both accuracies."""
    ref = np.asarray(ref.detach().cpu() if isinstance(ref, torch.Tensor) else ref, dtype=np.float64)
    out = np.asarray(out.detach().cpu() if isinstance(out, torch.Tensor) else out, dtype=np.float64)
    diff = np.abs(out - ref)
    res = {
        "max_abs_error": float(diff.max(initial=0)),
        "mean_abs_error": float(diff.mean()) if diff.size else 0.0,
        "rel_error": float(diff.max(initial=0) / max(np.abs(ref).max(initial=0), 1e-12)),
        "mean_logit_l2": float(np.linalg.norm(out - ref, axis=-1).mean()) if diff.size else 0.0,
        "top1_agreement": float((out.argmax(-1) == ref.argmax(-1)).mean()) if diff.size else 1.0,
        "samples": int(len(ref)),
    }
    if labels is not None:
        labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        res["accuracy_original"] = float((ref.argmax(-1) == labels).mean())
        res["accuracy"] = res["accuracy_compressed"] = float((out.argmax(-1) == labels).mean())
        res["accuracy_drop"] = res["accuracy_original"] - res["accuracy_compressed"]
    return res
