"""Data-free fidelity of channel shrinking on the real checkpoints: top-1 and mean logit l2 distance to
the original for prune and intrafusion (merge: the default; exact; reference) at sparsity 0.1 ... 0.7, BN folded
first (`--no-fold-bn`: BN kept and shrunk with its group). `--pattern 0ppp` applies the sparsity as DTP's
[0, p, p, p] (stem stage kept), e.g. the start points of the DTP benchmark's Intra-Fusion rows.

    .venv/bin/python bench/channels_fidelity.py [--limit N] [--models resnet20,resnet56,...] [--pattern 0ppp] [--no-fold-bn]
"""

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

from common import MODELS, ROOT, eval_data, load, save

from otcompress.channels.fold_bn import fold_batchnorm
from otcompress.metrics import predict
from otcompress.tasks.classification import fidelity
from otcompress.channels.shrink import shrink_channels

ap = argparse.ArgumentParser()
ap.add_argument("--limit", type=int, default=None,
                help="evaluate on the first N test images (test.npz is sorted by class: use it only for smoke runs)")
ap.add_argument("--models", default=",".join(MODELS))
ap.add_argument("--sparsities", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7")
ap.add_argument("--out", default="channels_fidelity.json")
ap.add_argument("--every", type=int, default=1, help="use every k-th test image (a class-balanced subset of test.npz)")
ap.add_argument("--pattern", default="uniform", choices=("uniform", "0ppp"))
ap.add_argument("--no-fold-bn", action="store_true")
args = ap.parse_args()
torch.set_grad_enabled(False)
rows, n_images = [], {}
for name in args.models.split(","):
    base = load(name)
    unfolded = None if args.no_fold_bn else copy.deepcopy(base)
    x, y = eval_data(name, args.limit)
    x, y = x[:: args.every], y[:: args.every]
    n_images[name] = len(x)
    if not args.no_fold_bn:
        fold_batchnorm(base, x[:1])
    ref = predict(base, x)
    acc0 = float((ref.argmax(-1) == y).float().mean())
    print(f"{name}: original top-1 {acc0:.4f} on {len(x)} images")
    for sp in [float(s) for s in args.sparsities.split(",")]:
        for method, fusion in (("prune", None), ("intrafusion", "merge"), ("intrafusion", "exact"), ("intrafusion", "reference")):
            m = copy.deepcopy(base)
            t0 = time.perf_counter()
            kw = {"fusion": fusion} if fusion else {}
            with torch.enable_grad():
                shrink_channels(m, x[:1], method, sparsity=sp if args.pattern == "uniform" else [0, sp, sp, sp],
                                unfolded=unfolded, progress=False, **kw)
            secs = time.perf_counter() - t0
            f = fidelity(ref, predict(m, x), y)
            label = method if not fusion else f"intrafusion-{fusion}"
            rows.append({"model": name, "sparsity": sp, "pattern": args.pattern, "fold_bn": not args.no_fold_bn,
                         "method": label, "top1": f["accuracy"], "top1_original": acc0,
                         "mean_logit_l2": f["mean_logit_l2"], "agreement": f["top1_agreement"], "seconds": secs})
            print(f"  sparsity {sp:.1f} {label:<24} top-1 {f['accuracy']:.4f}  logit l2 {f['mean_logit_l2']:.3f}")
path = save(args.out, rows)

from plot_channels import plot

plot([path], path.with_suffix(".png"))
print(f"wrote {path} and {path.with_suffix('.png')}")
sys.path.insert(0, str(ROOT))
from scripts.fill_readme import fill  # noqa: E402

METHODS = ("prune", "intrafusion-merge", "intrafusion-exact", "intrafusion-reference")
lines = []
for name in dict.fromkeys(r["model"] for r in rows):
    rs = [r for r in rows if r["model"] == name]
    lines += [f"**{name}** (original {100 * rs[0]['top1_original']:.1f}%, {n_images[name]} images)", "",
              "| sparsity | prune | merge (default) | exact | reference | mean logit distance: merge | reference |",
              "|---|---|---|---|---|---|---|"]
    for sp in dict.fromkeys(r["sparsity"] for r in rs):
        at = {r["method"]: r for r in rs if r["sparsity"] == sp}
        lines.append(f"| {sp:.1f} | " + " | ".join(f"{100 * at[m]['top1']:.1f}" for m in METHODS)
                     + f" | {at['intrafusion-merge']['mean_logit_l2']:.3g} | {at['intrafusion-reference']['mean_logit_l2']:.3g} |")
    lines.append("")
print("\n".join(lines))
fill(Path(args.out).stem, "\n".join(lines), required=False)
