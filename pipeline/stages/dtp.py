"""Stage `dtp`: learn transport masks with the weights, hard-prune with the same group machinery as
`prune`/`intrafusion`, fine-tune. Checkpoints every epoch; `run --resume` continues from the last one."""

from __future__ import annotations


import torch

from ..channels.allocation import check_sparsity
from ..recipe.schema import Field
from .base import Stage
from .channels import COMMON


def labelled(data: dict | None) -> list[str]:
    """Training stages need labels: say so before any work, not after the first stages ran."""
    from ..data import has_labels

    if data and data.get("train") and not has_labels(data["train"]):
        return [f"[data].train = {data['train']} has no labels (an .npz needs an array 'y')"]
    return []


class DTP(Stage):
    kind = "dtp"
    trains = True
    fields = {
        **{k: v for k, v in COMMON.items() if k not in ("sparsity", "flops", "allocation")},
        "sparsity": Field((float, list, dict), check=check_sparsity,
                          help="a fraction in [0, 1), a per-stage list, or a table of patterns"),
        "flops": Field((float,), lo=0.01, hi=1.0, help="a fraction in (0, 1] of the original FLOPs to keep"),
        "mask_epochs": Field((int,), default=10, lo=0),
        "finetune_epochs": Field((int,), default=10, lo=0),
        "lr": Field((float,), default=0.05, lo=0.0),
        "momentum": Field((float,), default=0.9, lo=0.0, hi=1.0),
        "weight_decay": Field((float,), default=5e-4, lo=0.0),
        "batch_size": Field((int,), default=128, lo=1),
        "eps": Field((float,), default=1.0, lo=1e-6, help="a positive number (entropic temperature)"),
        "sinkhorn_iters": Field((int,), default=1, lo=1, hi=100,
                                help="an integer in [1, 100]; kept for the reference's recipes, no effect: the "
                                     "step is the Sinkhorn fixed point in closed form (see dtp/masks.py)"),
        "budget_weight": Field((float,), default=10.0, lo=0.0),
        "device": Field((str,), default="auto", choices=("auto", "cpu", "cuda")),
        "seed": Field((int,), default=0),
        "augment": Field((str,), default="crop_flip", choices=("crop_flip", "crop", "none")),
        "compile": Field((bool,), default=False,
                         help="true or false: torch.compile the training step (worth it on CUDA: the masks' "
                              "small operators fuse into a few kernels)"),
    }

    def needs(self, params):
        return {"data.train": "dtp trains"}

    def provides(self, params):
        return {"shrunk"}

    def check(self, params, model, data, facts):
        errs = labelled(data)
        if (params["sparsity"] is None) == (params["flops"] is None):
            errs.append("give exactly one of sparsity (per-group keep ratios) or flops (fraction of FLOPs to keep)")
        if params["device"] == "cuda" and not torch.cuda.is_available():
            errs.append("device = 'cuda' but CUDA is not available here (use 'auto' or 'cpu')")
        return errs

    def apply(self, ctx, params):
        from ..dtp.learn import run_dtp

        return run_dtp(ctx, params)
