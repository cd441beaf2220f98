"""onnxruntime CPU latency of token-reduced vit_tiny_p2 (keep 0.9 for every method, plus ToMe at r = 16)
against the original, batch 1 and 32, next to the FLOP reduction. One dynamic-batch export per model;
the export time is recorded too. Models are timed in interleaved rounds (each round: every model, `--runs`
calls each, median) and the median over rounds is reported, so a shared machine's drift hits every model
alike instead of whichever happened to run during it.

    .venv/bin/python bench/tokens_ort_latency.py [--rounds 7] [--runs 5]
"""

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from common import load, save

from otcompress.cli.bench import time_fn
from otcompress.exporters.onnx import export_onnx
from otcompress.exporters.onnxruntime import OrtRunner
from otcompress.metrics import count_flops
from otcompress.tokens.patch import apply_token_reduction

ap = argparse.ArgumentParser()
ap.add_argument("--rounds", type=int, default=7)
ap.add_argument("--runs", type=int, default=5)
args = ap.parse_args()
base = load("vit_tiny_p2")
shape = (3, 32, 32)
f0 = count_flops(base, (1, *shape))
res = {"model": "vit_tiny_p2", "threads": torch.get_num_threads(), "rounds": args.rounds, "rows": []}
models = [("original", None), ("tome", {"keep": 0.9}), ("tome", {"r": 16}), ("pitome", {"keep": 0.9}),
          ("otprune", {"keep": 0.9})]
with tempfile.TemporaryDirectory() as td:
    runners = []
    for i, (tag, cfg) in enumerate(models):
        m = copy.deepcopy(base).eval()
        if cfg:
            apply_token_reduction(m, {"method": tag, **cfg})
        p = Path(td) / f"{i}.onnx"
        t0 = time.perf_counter()
        export_onnx(m, torch.zeros(1, *shape), p, dynamic_batch=True)
        runners.append((OrtRunner(p, providers=["CPUExecutionProvider"]), time.perf_counter() - t0,
                        f0 / count_flops(m, (1, *shape))))
    for batch in (1, 32):
        x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
        times = [[] for _ in models]
        for _ in tqdm(range(args.rounds), desc=f"batch {batch}"):  # interleaved: drift hits every model alike
            for i, (r, _, _) in enumerate(runners):
                times[i].append(time_fn(lambda: r.infer(x), args.runs, 1)["median_ms"])
        ms = [statistics.median(t) for t in times]
        for (tag, cfg), (_, export_s, flop_red), t, med in zip(models, runners, times, ms):
            row = {"method": tag, **(cfg or {}), "batch": batch, "median_ms": med, "min_ms": min(t),
                   "max_ms": max(t), "export_s": export_s, "speedup": ms[0] / med, "flop_reduction": flop_red}
            row["speedup_over_flop_reduction"] = row["speedup"] / flop_red
            res["rows"].append(row)
            print(f"{tag:<8} {str(cfg or ''):<14} batch {batch:>2}: {med:8.2f} ms (rounds {min(t):.1f}-{max(t):.1f})  "
                  f"speedup {row['speedup']:.2f}x  FLOP reduction {flop_red:.2f}x  ratio "
                  f"{row['speedup_over_flop_reduction']:.2f}  (export {export_s:.0f} s)", flush=True)
print(f"wrote {save('tokens_ort_latency.json', res)}")
