"""Allocation at a FLOPs budget, after repair, side by side in one run: on the CIFAR checkpoints, `prune` with
uniform, global and sensitivity allocation (proxy "mean", the default, and "regress"), `intrafusion` with
sensitivity allocation, and `prune` with importance = "reconstruction" (uniform, and sensitivity with the regress
proxy, which measures what that importance counts on: a refit), each followed by `repair` (512 unlabeled
training images), all `round_to = 8`. FLOPs budgets isolate the allocation from latency noise: at a
measured-latency target a few percent of timing noise on these small models is tens of percent of FLOPs
(bench/latency.py). Top-1 on --limit test images.
bench/results/NAME.json, NAME.png, the README table between the NAME markers.

    .venv/bin/python bench/allocation.py [--models resnet20:0.34,resnet56:0.42,vgg11_bn_half:0.5,mobilenetv2:0.5]
        [--out allocation]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from common import MODELS, SHARED, eval_data, load, publish

# (label, channel stage, stage keys)
VARIANTS = [
    ("prune, uniform", "prune", {"allocation": "uniform"}),
    ("prune, global", "prune", {"allocation": "global"}),
    ("prune, sensitivity (mean proxy)", "prune", {"allocation": "sensitivity", "proxy": "mean"}),
    ("prune, sensitivity (regress proxy)", "prune", {"allocation": "sensitivity", "proxy": "regress"}),
    ("intrafusion, sensitivity (mean proxy)", "intrafusion", {"allocation": "sensitivity", "proxy": "mean"}),
    ("prune, uniform, reconstruction importance", "prune", {"allocation": "uniform", "importance": "reconstruction"}),
    ("prune, sensitivity (regress proxy), reconstruction importance", "prune",
     {"allocation": "sensitivity", "proxy": "regress", "importance": "reconstruction"}),
]
CALIB = 512


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet20:0.34,resnet56:0.42,vgg11_bn_half:0.5,mobilenetv2:0.5",
                    help="name:FLOPs fraction kept, comma-separated")
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--out", default="allocation")
    args = ap.parse_args()
    import otcompress
    from otcompress.metrics import count_flops, predict

    torch.set_num_threads(2)
    rows, shape = [], [1, 3, 32, 32]
    for spec in args.models.split(","):
        name, flops = spec.split(":")
        model, (arch, margs, *_, norm) = load(name), MODELS[name]
        x, y = eval_data(name, args.limit)
        y = torch.as_tensor(y)
        data = {"calib": str(SHARED / "cifar10" / "train-imagefolder.tar.gz"), "mean": norm[0], "std": norm[1]}
        f0 = count_flops(model, shape)
        dense = float((predict(model, x).argmax(-1) == y).float().mean())
        for label, channel, keys in VARIANTS:
            t0 = time.perf_counter()
            stages = [{"kind": "fold_bn"}, {"kind": channel, "flops": float(flops), "round_to": 8, **keys},
                      {"kind": "repair", "samples": CALIB}]
            small, _ = otcompress.compress(copy.deepcopy(model), shape, stages, data=data, name=name, source=arch,
                                           args=margs)
            rows.append({"model": name, "flops_target": float(flops), "method": label + " + repair", "dense_top1": dense,
                         "top1": float((predict(small, x).argmax(-1) == y).float().mean()),
                         "flops": count_flops(small, shape) / f0, "seconds": time.perf_counter() - t0})
            print(rows[-1], flush=True)
    publish(f"{args.out}.json", {"rows": rows, "calibration_images": CALIB, "limit": args.limit}, plot, markdown,
            args.out)


def markdown(res: dict) -> str:
    lines = ["| model | FLOPs target | method | FLOPs kept | top-1 % |", "|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['model']} | {r['flops_target']:.2f} | {r['method']} | {r['flops']:.3f} | "
                     f"{100 * r['top1']:.2f} |")
    best = {}
    for r in res["rows"]:
        best.setdefault(r["model"], []).append(r)
    tail = "; ".join(f"{m}: best {max(rs, key=lambda r: r['top1'])['method']} (dense {100 * rs[0]['dense_top1']:.1f})"
                     for m, rs in best.items())
    return "\n".join(lines) + f"\n\n{tail}.\n\n(top-1 on {res['limit']} CIFAR-10 test images; ResNets: 932 lossless.)"


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in res["rows"]))
    methods = list(dict.fromkeys(r["method"] for r in res["rows"]))
    fig, ax = plt.subplots(figsize=(8, 3.6))
    w = 0.8 / len(methods)
    for j, method in enumerate(methods):
        vals = [100 * next((r["top1"] for r in res["rows"] if r["model"] == m and r["method"] == method), 0.0)
                for m in models]
        ax.bar([i + j * w for i in range(len(models))], vals, w, label=method)
    ax.set_xticks([i + 0.4 - w / 2 for i in range(len(models))], models)
    ax.set_ylabel("top-1 % after repair")
    ax.set_ylim(bottom=min(100 * r["top1"] for r in res["rows"]) - 5)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
