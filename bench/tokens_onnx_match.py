"""How often onnxruntime matches PyTorch within 1e-4 (max abs logit) for token-reduced vit_tiny_p2, per
image, on real CIFAR-10 images (official-order lossless set) and on seeded random inputs. For scale, the
same count between two PyTorch runs that differ only in float rounding: batch 64 vs one image at a time,
and float32 vs float64. A merge decision between two near-equal scores can flip under that noise.

    .venv/bin/python bench/tokens_onnx_match.py [--methods tome,pitome,otprune] [--keep 0.9] [--n 64]
"""

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from common import CIFAR_NORM, RESULTS, load, need, save

from otcompress.data import load_dataset
from otcompress.exporters.onnx import export_onnx
from otcompress.exporters.onnxruntime import OrtRunner
from otcompress.tokens.patch import apply_token_reduction

ap = argparse.ArgumentParser()
ap.add_argument("--methods", default="tome,pitome,otprune")
ap.add_argument("--keep", type=float, default=0.9)
ap.add_argument("--n", type=int, default=64)
args = ap.parse_args()
ds = load_dataset(need("cifar10/test-lossless-932.npz"), args.n)
real = ds.batch(slice(None), *CIFAR_NORM)
rand = torch.from_numpy(np.random.default_rng(0).standard_normal(tuple(real.shape)).astype(np.float32))
methods = args.methods.split(",")
old = RESULTS / "tokens_onnx_match.json"  # rows of methods not run this time are kept
rows = [r for r in (json.loads(old.read_text()) if old.exists() else []) if r["method"] not in methods]
for method in methods:
    m = load("vit_tiny_p2")
    apply_token_reduction(m, {"method": method, "keep": args.keep})
    with tempfile.TemporaryDirectory() as td:
        export_onnx(m, real[:1], Path(td) / "m.onnx")
        ort = OrtRunner(Path(td) / "m.onnx")
        for name, x in (("real", real), ("random", rand)):
            with torch.no_grad():
                ref = m(x).numpy()
                one = np.concatenate([m(x[i:i + 1]).numpy() for i in range(len(x))])
                f64 = m.double()(x.double()).numpy()
                m.float()
            row = {"method": method, "keep": args.keep, "inputs": name, "images": len(x)}
            for what, other in (("ort", ort.infer_batched(x.numpy())["logits"]), ("torch_batch1", one), ("torch_float64", f64)):
                d = np.abs(other - ref).max(1)
                row[f"{what}_within_1e-4"], row[f"{what}_max_abs"] = int((d <= 1e-4).sum()), float(d.max())
            rows.append(row)
            print(rows[-1], flush=True)
print(f"wrote {save('tokens_onnx_match.json', rows)}")
