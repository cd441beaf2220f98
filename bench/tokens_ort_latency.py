"""onnxruntime CPU latency of token-reduced vit_tiny_p2 (keep 0.9 for every method, plus ToMe at r = 16)
against the original, batch 1 and 32, next to the FLOP reduction. One dynamic-batch export per model;
the export time is recorded too (OTPrune unrolls its k-step greedy loop in every block).

    .venv/bin/python bench/tokens_ort_latency.py [--runs 20] [--otprune]
"""

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import load, save

from otcompress.bench import time_fn
from otcompress.exporters.onnx import export_onnx
from otcompress.exporters.runners import OrtRunner
from otcompress.metrics import count_flops
from otcompress.tokens.patch import apply_token_reduction

ap = argparse.ArgumentParser()
ap.add_argument("--runs", type=int, default=20)
ap.add_argument("--otprune", action="store_true", help="also OTPrune (its export alone takes ~10 min)")
args = ap.parse_args()
base = load("vit_tiny_p2")
shape = (3, 32, 32)
f0 = count_flops(base, (1, *shape))
res = {"model": "vit_tiny_p2", "threads": torch.get_num_threads(), "rows": []}
lat0 = {}
with tempfile.TemporaryDirectory() as td:
    for tag, cfg in [("original", None), ("tome", {"keep": 0.9}), ("tome", {"r": 16}), ("pitome", {"keep": 0.9})] + \
            ([("otprune", {"keep": 0.9})] if args.otprune else []):
        m = copy.deepcopy(base).eval()
        if cfg:
            apply_token_reduction(m, {"method": tag, **cfg})
        p = Path(td) / f"{tag}.onnx"
        t0 = time.perf_counter()
        export_onnx(m, torch.zeros(1, *shape), p, dynamic_batch=True)
        export_s = time.perf_counter() - t0
        r = OrtRunner(p, providers=["CPUExecutionProvider"])
        flop_red = f0 / count_flops(m, (1, *shape))
        for batch in (1, 32):
            x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
            ms = time_fn(lambda: r.run(x), args.runs, 3)["median_ms"]
            lat0.setdefault(batch, ms)
            row = {"method": tag, **(cfg or {}), "batch": batch, "median_ms": ms, "export_s": export_s,
                   "speedup": lat0[batch] / ms, "flop_reduction": flop_red}
            row["speedup_over_flop_reduction"] = row["speedup"] / flop_red
            res["rows"].append(row)
            print(f"{tag:<8} {str(cfg or ''):<14} batch {batch:>2}: {ms:8.2f} ms  speedup {row['speedup']:.2f}x  "
                  f"FLOP reduction {flop_red:.2f}x  ratio {row['speedup_over_flop_reduction']:.2f}  (export {export_s:.0f} s)",
                  flush=True)
print(f"wrote {save('tokens_ort_latency.json', res)}")
