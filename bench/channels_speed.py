"""Speed: onnxruntime CPU latency of original vs pruned (0.5) models next to the FLOP reduction, and the
pipeline's own speed: intrafusion over all groups of ImageNet-shaped ResNet-50 at 0.5 (time, peak RSS).

    .venv/bin/python bench/channels_speed.py [--runs 30]
"""

import argparse
import copy
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import save

from otcompress.cli.bench import time_fn
from otcompress.exporters.onnx import export_onnx
from otcompress.exporters.onnxruntime import OrtRunner
from otcompress.channels.fold_bn import fold_batchnorm
from otcompress.metrics import count_flops
from otcompress.channels.shrink import shrink_channels
from otcompress.models import build_model

ap = argparse.ArgumentParser()
ap.add_argument("--runs", type=int, default=30)
args = ap.parse_args()
res = {"threads": torch.get_num_threads(), "latency": []}

# 1. the pipeline's own speed on ResNet-50 (ImageNet shape), measured first so RSS is not inflated by later work
model = build_model("resnet50", {})
x = torch.zeros(1, 3, 224, 224)
t0 = time.perf_counter()
fold_batchnorm(model, x)
shrink_channels(model, x, "intrafusion", sparsity=0.5, progress=False)
res["resnet50_intrafusion_seconds"] = time.perf_counter() - t0
res["resnet50_intrafusion_peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
print(f"intrafusion ResNet-50 @0.5: {res['resnet50_intrafusion_seconds']:.1f} s, peak RSS {res['resnet50_intrafusion_peak_rss_gb']:.2f} GB")

# 2. latency of the exported models
for arch, args_, shape in (("resnet50", {}, (3, 224, 224)), ("cifar_resnet56", {}, (3, 32, 32)),
                           ("cifar_vgg11_bn", {"width": 32}, (3, 32, 32)), ("cifar_mobilenetv2", {}, (3, 32, 32))):
    base = build_model(arch, args_)
    fold_batchnorm(base, torch.zeros(1, *shape))
    pruned = copy.deepcopy(base)
    shrink_channels(pruned, torch.zeros(1, *shape), "prune", sparsity=0.5, progress=False)
    f0, f1 = count_flops(base, (1, *shape)), count_flops(pruned, (1, *shape))
    for batch in (1, 32):
        lat = {}
        with tempfile.TemporaryDirectory() as td:
            for tag, m in (("original", base), ("pruned", pruned)):
                p = Path(td) / f"{tag}.onnx"
                export_onnx(m, torch.zeros(batch, *shape), p)
                r = OrtRunner(p, providers=["CPUExecutionProvider"])
                xin = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
                lat[tag] = time_fn(lambda: r.infer(xin), args.runs if batch == 1 or arch != "resnet50" else 10, 3)["median_ms"]
        row = {"model": arch, "batch": batch, "original_ms": lat["original"], "pruned_ms": lat["pruned"],
               "speedup": lat["original"] / lat["pruned"], "flop_reduction": f0 / f1}
        row["speedup_over_flop_reduction"] = row["speedup"] / row["flop_reduction"]
        res["latency"].append(row)
        print(f"{arch:<18} batch {batch:>2}: {lat['original']:8.2f} -> {lat['pruned']:8.2f} ms  speedup {row['speedup']:.2f}x  "
              f"FLOP reduction {row['flop_reduction']:.2f}x  ratio {row['speedup_over_flop_reduction']:.2f}")
print(f"wrote {save('channels_speed.json', res)}")
