"""Data-free fidelity of channel shrinking on the real checkpoints: top-1 and mean logit l2 distance to
the original for prune, intrafusion (exact) and intrafusion (reference) at sparsity 0.1 ... 0.7.

    .venv/bin/python bench/channels_fidelity.py [--limit N] [--models resnet20,resnet56,...]
"""

import argparse
import copy
import time

import torch

from common import MODELS, eval_data, load, save

from otcompress.fold_bn import fold_batchnorm
from otcompress.metrics import fidelity, predict
from otcompress.shrink import shrink_channels

ap = argparse.ArgumentParser()
ap.add_argument("--limit", type=int, default=None, help="evaluate on the first N test images")
ap.add_argument("--models", default=",".join(MODELS))
ap.add_argument("--sparsities", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7")
args = ap.parse_args()
torch.set_grad_enabled(False)
rows = []
for name in args.models.split(","):
    base = load(name)
    x, y = eval_data(name, args.limit)
    fold_batchnorm(base, x[:1])
    ref = predict(base, x)
    acc0 = float((ref.argmax(-1) == y).float().mean())
    print(f"{name}: original top-1 {acc0:.4f} on {len(x)} images")
    for sp in [float(s) for s in args.sparsities.split(",")]:
        for method, fusion in (("prune", None), ("intrafusion", "exact"), ("intrafusion", "reference")):
            m = copy.deepcopy(base)
            t0 = time.perf_counter()
            kw = {"fusion": fusion} if fusion else {}
            with torch.enable_grad():
                shrink_channels(m, x[:1], method=method, sparsity=sp, progress=False, **kw)
            secs = time.perf_counter() - t0
            f = fidelity(ref, predict(m, x), y)
            label = method if not fusion else f"intrafusion-{fusion}"
            rows.append({"model": name, "sparsity": sp, "method": label, "top1": f["accuracy"], "top1_original": acc0,
                         "mean_logit_l2": f["mean_logit_l2"], "agreement": f["top1_agreement"], "seconds": secs})
            print(f"  sparsity {sp:.1f} {label:<24} top-1 {f['accuracy']:.4f}  logit l2 {f['mean_logit_l2']:.3f}")
path = save("channels_fidelity.json", rows)

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

names = list(dict.fromkeys(r["model"] for r in rows))
fig, axes = plt.subplots(2, len(names), figsize=(4 * len(names), 7), squeeze=False)
for j, name in enumerate(names):
    for method in ("prune", "intrafusion-exact", "intrafusion-reference"):
        rs = [r for r in rows if r["model"] == name and r["method"] == method]
        axes[0][j].plot([r["sparsity"] for r in rs], [r["top1"] for r in rs], marker="o", label=method)
        axes[1][j].plot([r["sparsity"] for r in rs], [r["mean_logit_l2"] for r in rs], marker="o", label=method)
    axes[0][j].axhline(rs[0]["top1_original"], color="gray", ls=":", label="original")
    axes[0][j].set_title(name)
    axes[0][j].set_ylabel("top-1")
    axes[1][j].set_ylabel("mean logit l2 to original")
    axes[1][j].set_xlabel("sparsity (all prunable groups)")
    axes[1][j].set_yscale("log")
axes[0][0].legend(fontsize=8)
fig.tight_layout()
fig.savefig(path.with_suffix(".png"), dpi=100)
print(f"wrote {path} and {path.with_suffix('.png')}")
