"""Share of the transformer blocks' time spent choosing and merging tokens, in eager PyTorch on this
machine's CPU (the GPU version is `bench/tokens.py throughput`), timed by `common.merge_share`; median
over repetitions. Also the operators one merge dispatches (`common.merge_ops`; kernel launches on a GPU).

    .venv/bin/python bench/tokens_merge_share.py [--model deit_small|vit_tiny_p2] [--batch 8] [--reps 5]
"""

import argparse
import copy

import torch

from common import load, merge_ops, merge_share, save

from otcompress.metrics import count_flops
from otcompress.tokens import patch as P
from otcompress.models import build_model

ap = argparse.ArgumentParser()
ap.add_argument("--model", default="deit_small", choices=("deit_small", "vit_tiny_p2"))
ap.add_argument("--batch", type=int, default=8)
ap.add_argument("--reps", type=int, default=5)
args = ap.parse_args()
torch.set_grad_enabled(False)
base = build_model("vit", {"config": "deit_small"}) if args.model == "deit_small" else load("vit_tiny_p2")
size = 224 if args.model == "deit_small" else 32
x = torch.randn(args.batch, 3, size, size)
f0 = count_flops(base, (1, 3, size, size))
rows = []
for cfg in ({"method": "tome", "r": 13} if args.model == "deit_small" else {"method": "tome", "keep": 0.9},
            {"method": "pitome", "keep": 0.9}, {"method": "otprune", "keep": 0.9}):
    m = copy.deepcopy(base).eval()
    P.apply_token_reduction(m, cfg)
    row = {**cfg, "flop_reduction": f0 / count_flops(m, (1, 3, size, size)), **merge_share(m, x, args.reps),
           "merge_ops": merge_ops(m, x)}
    rows.append(row)
    print(row, flush=True)
print(f"wrote {save(f'tokens_merge_share_{args.model}_b{args.batch}_cpu.json', {'model': args.model, 'batch': args.batch, 'threads': torch.get_num_threads(), 'rows': rows})}")
