"""Time to export an OTPrune ViT (vit_tiny_p2 shape, random weights, keep 0.9) with the first `--depth` blocks:
through torch.export (dynamo, the default) OTPrune's k greedy steps are one Scan per block; the legacy
TorchScript exporter unrolls them into thousands of nodes per block. `--full-optimizer` forces onnxscript's
whole optimizer (pattern rewriter included) even on graphs over exporters.onnx.LARGE_GRAPH nodes, which
otherwise get only its linear passes.

    .venv/bin/python bench/tokens_export_time.py --depth 1 [--exporter dynamo|legacy] [--full-optimizer]
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

from common import save

import otcompress.exporters.onnx as onnx_export
from otcompress.tokens.patch import apply_token_reduction
from otcompress.models import build_model

ap = argparse.ArgumentParser()
ap.add_argument("--depth", type=int, default=1)
ap.add_argument("--exporter", default="dynamo", choices=("dynamo", "legacy"))
ap.add_argument("--full-optimizer", action="store_true")
args = ap.parse_args()
if args.full_optimizer:
    onnx_export.LARGE_GRAPH = 10**9
m = build_model("vit", dict(img_size=32, patch_size=2, embed_dim=192, depth=args.depth, num_heads=3, num_classes=10))
apply_token_reduction(m, {"method": "otprune", "keep": 0.9})
with tempfile.TemporaryDirectory() as td:
    t0 = time.perf_counter()
    info = onnx_export.export_onnx(m.eval(), torch.zeros(1, 3, 32, 32), Path(td) / "m.onnx", exporter=args.exporter)
    secs = time.perf_counter() - t0
row = {**vars(args), "seconds": secs, "nodes": info["nodes"]}
print(row)
name = f"tokens_export_time_d{args.depth}_{args.exporter}{'_full' if args.full_optimizer else ''}.json"
print(f"wrote {save(name, row)}")
