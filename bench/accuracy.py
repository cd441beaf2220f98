"""Accuracy at a FLOPs budget on the shared checkpoints, side by side in one run: prune and Intra-Fusion
(merge, exact, reference), each data-free and after `repair` (512 unlabeled training images), plain
BatchNorm re-estimation (prune with BN kept, statistics re-estimated), the FLOPs allocation criteria, and
Torch-Pruning's MagnitudePruner (uniform and global) pruned until it reaches the same FLOPs.

    .venv/bin/python bench/accuracy.py [--models resnet20,resnet56,vgg11_bn_half,mobilenetv2] [--flops 0.7,0.5,0.3]

Evaluation: the lossless 932-image test set for the ResNets (trained on PNG-quality data), every 5th image of
test.npz (a class-balanced 2,000) for VGG and MobileNetV2. Results: bench/results/accuracy.json and .png.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch

from common import MODELS, ROOT, SHARED, eval_data, load, save

sys.path.insert(0, str(ROOT))
from scripts.fill_readme import fill  # noqa: E402

from otcompress.channels.fold_bn import fold_batchnorm
from otcompress.channels.repair import reference, repair
from otcompress.channels.shrink import shrink_channels
from otcompress.data import sample_dataset
from otcompress.metrics import count_flops, predict

X0 = torch.zeros(1, 3, 32, 32)
OURS = [  # (label, strategy, options, allocation)
    ("prune", "prune", {}, "uniform"),
    ("intrafusion-merge", "intrafusion", {"fusion": "merge"}, "uniform"),
    ("intrafusion-exact", "intrafusion", {"fusion": "exact"}, "uniform"),
    ("intrafusion-reference", "intrafusion", {"fusion": "reference"}, "uniform"),
    ("prune (global)", "prune", {}, "global"),
    ("intrafusion-merge (global)", "intrafusion", {"fusion": "merge"}, "global"),
]


def accuracy(model, x, y) -> float:
    return float((predict(model, x).argmax(-1) == y).float().mean())


def torch_pruning(base, target_flops, global_pruning: bool):
    """Torch-Pruning's MagnitudePruner (L1), pruned in small steps until the FLOPs reach the target."""
    import torch_pruning as tp

    m = copy.deepcopy(base)
    layers = [(n, mod) for n, mod in m.named_modules() if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d))]
    ignored = [layers[-1][1]]
    if getattr(m, "otcompress_prune_scope", None) == "internal":  # option-A ResNets: block-internal channels only,
        ignored = [mod for n, mod in layers if not n.endswith(".conv1")]  # as for ours (its graph mis-couples the rest)
    full = count_flops(m, [1, 3, 32, 32])
    pruner = tp.pruner.MagnitudePruner(m, X0, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.9,
                                       iterative_steps=180, global_pruning=global_pruning, ignored_layers=ignored)
    for _ in range(180):
        if count_flops(m, [1, 3, 32, 32]) <= target_flops * full:
            break
        pruner.step()
    return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet20,resnet56,vgg11_bn_half,mobilenetv2")
    ap.add_argument("--flops", default="0.7,0.5,0.3")
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--out", default="accuracy.json")
    args = ap.parse_args()
    rows = []
    calib_src = SHARED / "cifar10" / "train-imagefolder.tar.gz"
    calib_raw = sample_dataset(calib_src, args.samples, seed=0)
    for name in args.models.split(","):
        arch, _, _, _, norm = MODELS[name]
        x, y = eval_data(name)
        if "resnet" not in name:
            x, y = x[::5], y[::5]
        calib = calib_raw.batch(slice(None), *norm)
        base = load(name)
        full = count_flops(base, [1, 3, 32, 32])
        acc0 = accuracy(base, x, y)
        print(f"{name}: original {acc0:.4f} on {len(x)} images, {full / 1e6:.1f} MFLOPs", flush=True)
        folded = copy.deepcopy(base)
        fold_batchnorm(folded, X0)
        ref = reference(base, True, X0)

        def record(method, model, target, t0, **extra):
            r = {"model": name, "method": method, "flops_target": target, "flops": count_flops(model, [1, 3, 32, 32]) / full,
                 "params": sum(p.numel() for p in model.parameters()), "top1": accuracy(model, x, y), "top1_original": acc0,
                 "seconds": round(time.perf_counter() - t0, 1), **extra}
            rows.append(r)
            print(f"  {target:.1f} {method:<34} flops {r['flops']:.3f} top-1 {r['top1']:.4f} ({r['seconds']} s)", flush=True)

        for target in [float(f) for f in args.flops.split(",")]:
            for label, strategy, opts, alloc in OURS:
                t0 = time.perf_counter()
                m = copy.deepcopy(folded)
                rep = shrink_channels(m, X0, strategy, flops=target, allocation=alloc, unfolded=base, progress=False, **opts)
                record(label, m, target, t0)
                t0 = time.perf_counter()
                repair(m, ref, calib, rep.maps, progress=False)
                record(f"{label} + repair", m, target, t0)
            t0 = time.perf_counter()
            m = copy.deepcopy(base)  # BatchNorm kept through the shrink, then its statistics re-estimated
            rep = shrink_channels(m, X0, "prune", flops=target, progress=False)
            repair(m, reference(base, False, X0), calib, rep.maps, stats=False, reconstruct="never", progress=False)
            record("prune + BatchNorm re-estimation", m, target, t0)
            for glob in (False, True):
                t0 = time.perf_counter()
                try:
                    record(f"Torch-Pruning MagnitudePruner ({'global' if glob else 'uniform'})",
                           torch_pruning(base, target, glob), target, t0)
                except Exception as e:  # its dependency graph fails on some nets: recorded, not hidden
                    rows.append({"model": name, "method": f"Torch-Pruning ({'global' if glob else 'uniform'})",
                                 "flops_target": target, "error": f"{type(e).__name__}: {str(e)[:120]}"})
                    print(f"  {target:.1f} Torch-Pruning failed: {rows[-1]['error']}", flush=True)
    path = save(args.out, rows)
    plot(rows, path.with_suffix(".png"))
    print(f"wrote {path} and {path.with_suffix('.png')}")
    fill("accuracy", table(rows))


def table(rows) -> str:
    """Methods down, model x FLOPs target across; top-1 in %, the best of each column in bold."""
    cols = list(dict.fromkeys((r["model"], r["flops_target"]) for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["method"], r["model"], r["flops_target"]): r for r in rows}
    best = {c: max((r["top1"] for r in rows if (r["model"], r["flops_target"]) == c and "top1" in r), default=None)
            for c in cols}
    models = list(dict.fromkeys(m for m, _ in cols))
    head = ["| method | " + " | ".join(f"{m} {100 * f:.0f}%" for m, f in cols) + " |", "|---" * (len(cols) + 1) + "|",
            "| original | " + " | ".join(f"{100 * next(r['top1_original'] for r in rows if r['model'] == m and 'top1' in r):.1f}"
                                         for m, _ in cols) + " |"]
    lines = []
    for method in methods:
        out = []
        for c in cols:
            r = cell.get((method, *c))
            if r is None or "top1" not in r:
                out.append("fails" if r is not None else "—")
            else:
                v = f"{100 * r['top1']:.1f}"
                out.append(f"**{v}**" if r["top1"] == best[c] else v)
        lines.append(f"| {method} | " + " | ".join(out) + " |")
    return "\n".join(head + lines) + f"\n\n({len(models)} models; FLOPs reached within 2% of each target except where" \
        " Torch-Pruning's step overshoots; the JSON has each run's FLOPs, params and seconds.)"


def plot(rows, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["model"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows if "top1" in r))
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        for method in methods:
            rs = sorted((r for r in rows if r["model"] == name and r["method"] == method and "top1" in r),
                        key=lambda r: r["flops"])
            if rs:
                style = "-" if "repair" in method or "re-estimation" in method else ":"
                ax.plot([r["flops"] for r in rs], [100 * r["top1"] for r in rs], style, marker="o", ms=3, label=method)
        ax.set_title(name)
        ax.set_xlabel("FLOPs kept")
        ax.set_ylabel("top-1 (%)")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out, dpi=100)


if __name__ == "__main__":
    main()
