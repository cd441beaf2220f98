"""Share of the transformer blocks' time spent choosing and merging tokens, in eager PyTorch on this
machine's CPU (the GPU version is `bench/tokens.py throughput`). Blocks and `reduce_tokens` are timed
with perf_counter around each call (the CPU runs them synchronously); median over repetitions.

    .venv/bin/python bench/tokens_merge_share.py [--model deit_small|vit_tiny_p2] [--batch 8] [--reps 5]
"""

import argparse
import copy
import statistics
import time

import torch

from common import load, save

from otcompress.metrics import count_flops
from otcompress.tokens import patch as P
from otcompress.zoo import build_model

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
spent = {"merge": 0.0, "block": 0.0}
orig = P.reduce_tokens


def timed_reduce(*a, **k):
    t0 = time.perf_counter()
    out = orig(*a, **k)
    spent["merge"] += time.perf_counter() - t0
    return out


P.reduce_tokens = timed_reduce
rows = []
for cfg in ({"method": "tome", "r": 13} if args.model == "deit_small" else {"method": "tome", "keep": 0.9},
            {"method": "pitome", "keep": 0.9}, {"method": "otprune", "keep": 0.9}):
    m = copy.deepcopy(base).eval()
    P.apply_token_reduction(m, cfg)
    starts = []
    for b in m.blocks:
        b.register_forward_pre_hook(lambda mod, i: starts.append(time.perf_counter()))
        b.register_forward_hook(lambda mod, i, o: spent.__setitem__("block", spent["block"] + time.perf_counter() - starts.pop()))
    m(x)  # warm-up
    shares, merge_ms, block_ms = [], [], []
    for _ in range(args.reps):
        spent.update(merge=0.0, block=0.0)
        m(x)
        shares.append(spent["merge"] / spent["block"])
        merge_ms.append(1e3 * spent["merge"])
        block_ms.append(1e3 * spent["block"])
    row = {**cfg, "flop_reduction": f0 / count_flops(m, (1, 3, size, size)), "merge_ms": statistics.median(merge_ms),
           "blocks_ms": statistics.median(block_ms), "merge_share": statistics.median(shares)}
    rows.append(row)
    print(row, flush=True)
P.reduce_tokens = orig
print(f"wrote {save(f'tokens_merge_share_{args.model}_b{args.batch}_cpu.json', {'model': args.model, 'batch': args.batch, 'threads': torch.get_num_threads(), 'rows': rows})}")
