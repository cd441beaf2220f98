"""Stage `dtp`: learn transport masks with the weights, hard-prune with the same group machinery as
`prune`/`intrafusion`, fine-tune. Checkpoints every epoch; `run --resume` continues from the last one."""

from __future__ import annotations

import torch

from ..channels.allocation import check_sparsity
from ..channels.importance import IMPORTANCE
from ..recipe.schema import Field
from ..training.finetune import TRAIN_FIELDS, labelled
from .base import Stage
from .channels import COMMON


class DTP(Stage):
    kind = "dtp"
    trains = True
    fields = {
        **{k: v for k, v in COMMON.items() if k not in ("sparsity", "flops", "allocation", "proxy", "round_to")},
        "round_to": COMMON["round_to"],
        "sparsity": Field((float, list, dict), check=check_sparsity,
                          help="a fraction in [0, 1), a per-stage list, or a table of patterns"),
        "flops": Field((float,), lo=0.01, hi=1.0, help="a fraction in (0, 1] of the original FLOPs to keep"),
        "mask_epochs": Field((int,), default=10, lo=0),
        "finetune_epochs": Field((int,), default=10, lo=0),
        "eps": Field((float,), default=1.0, lo=1e-6, help="a positive number (entropic temperature)"),
        "budget_weight": Field((float,), default=10.0, lo=0.0),
        **TRAIN_FIELDS,
    }

    def needs(self, params):
        return {"data.train": "dtp trains", "model.trainable": "", "model.channels": ""}

    def provides(self, params):
        return {"shrunk"}

    def check(self, params, model, data, facts):
        errs = labelled(data)
        if sum(params[k] is not None for k in ("sparsity", "flops", "latency")) != 1:
            errs.append("give exactly one of sparsity (per-group keep ratios), flops (fraction of FLOPs to keep) or "
                        "latency (fraction of the measured latency to keep)")
        if IMPORTANCE[params["importance"]].needs_data:
            errs.append(("importance", f"dtp starts its masks from data-free scores; {params['importance']!r} reads "
                                       f"data: use one of {[k for k in IMPORTANCE if not IMPORTANCE[k].needs_data]}"))
        if params["device"] == "cuda" and not torch.cuda.is_available():
            errs.append("device = 'cuda' but CUDA is not available here (use 'auto' or 'cpu')")
        return errs

    def apply(self, ctx, params):
        from ..dtp.run import run_dtp

        return run_dtp(ctx, params)
