"""DTP on CIFAR ResNet-56 (GPU): [0, p, p, p], p in {0.5, 0.7}, against magnitude pruning and data-free
Intra-Fusion given the same fine-tuning epochs, and the unpruned model fine-tuned as long. All rows train on
the JPEG training set and are evaluated on test.npz. Also the per-epoch time with and without masks.

    python bench/dtp_resnet56.py --mask-epochs 3 --finetune-epochs 5 [--data DIR]
"""

import argparse
import tempfile
import time
from pathlib import Path

from common import SHARED, save

ap = argparse.ArgumentParser()
ap.add_argument("--mask-epochs", type=int, default=3)
ap.add_argument("--finetune-epochs", type=int, default=5)
ap.add_argument("--data", default=str(SHARED))
ap.add_argument("--sparsities", default="0.5,0.7")
ap.add_argument("--batch-size", type=int, default=128)
ap.add_argument("--lr", type=float, default=0.05)
ap.add_argument("--no-unpruned", action="store_true", help="skip the unpruned baseline (run it once, separately)")
ap.add_argument("--compile", action="store_true", help="compile = true on every training stage")
ap.add_argument("--out", default="dtp_resnet56.json")
args = ap.parse_args()
D = Path(args.data)
E = args.mask_epochs + args.finetune_epochs

HEAD = f"""
[model]
arch = "cifar_resnet56"
checkpoint = "{D / 'models/resnet56-4bfd9763.th'}"
input_shape = [1, 3, 32, 32]
[data]
eval = "{D / 'cifar10/test.npz'}"
train = "{D / 'cifar10/train-imagefolder.tar.gz'}"
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
"""
TRAIN = f'batch_size = {args.batch_size}\nlr = {args.lr}\n' + ("compile = true\n" if args.compile else "")


def recipe(name, stages):
    return f'name = "{name}"\n' + HEAD + stages


rows = []
runs = [] if args.no_unpruned else [("unpruned+finetune", None, f'[[stages]]\nkind = "finetune"\nepochs = {E}\n{TRAIN}')]
for p in [float(s) for s in args.sparsities.split(",")]:
    sp = f"sparsity = [0, {p}, {p}, {p}]"
    runs += [
        (f"dtp p={p}", p, f'[[stages]]\nkind = "dtp"\n{sp}\nmask_epochs = {args.mask_epochs}\n'
                          f'finetune_epochs = {args.finetune_epochs}\n{TRAIN}'),
        (f"magnitude+finetune p={p}", p, f'[[stages]]\nkind = "prune"\n{sp}\n[[stages]]\nkind = "finetune"\nepochs = {E}\n{TRAIN}'),
        (f"intrafusion+finetune p={p}", p, f'[[stages]]\nkind = "intrafusion"\n{sp}\n[[stages]]\nkind = "finetune"\n'
                                          f'epochs = {E}\n{TRAIN}'),
    ]
import torch

torch.backends.cudnn.benchmark = True
from otcompress.plan import load_plan
from otcompress.run import run_plan

with tempfile.TemporaryDirectory() as td:
    for label, p, stages in runs:
        path = Path(td) / "r.toml"
        path.write_text(recipe("b", stages))
        t0 = time.perf_counter()
        rep = run_plan(load_plan(path), Path(td) / "out", force=True, progress=False)
        st = rep["stages"]
        hist = [h for s in st for h in (s.get("details") or {}).get("history", [])]
        after_shrink = next((s for s in st if s["kind"] in ("prune", "intrafusion")), None)
        row = {"run": label, "p": p, "accuracy": st[-1]["accuracy"], "accuracy_original": st[0]["accuracy"],
               "accuracy_before_finetune": after_shrink["accuracy"] if after_shrink else None,
               "flops": st[-1]["flops"], "flops_original": st[0]["flops"], "params": st[-1]["params"],
               "epochs": E, "seconds": time.perf_counter() - t0,
               "mask_epoch_s": [h["seconds"] for h in hist if h["phase"] == "mask"],
               "finetune_epoch_s": [h["seconds"] for h in hist if h["phase"] == "finetune"],
               "history": hist}
        rows.append(row)
        save(args.out, rows)  # partial results survive a time limit
        print(f"{label:<28} top-1 {row['accuracy']:.4f} (orig {row['accuracy_original']:.4f})  FLOPs "
              f"{row['flops'] / row['flops_original']:.3f}x  {row['seconds']:.0f}s", flush=True)
unp = next((r for r in rows if r["p"] is None), None)
for r in rows if unp else []:
    if r["mask_epoch_s"]:
        r["mask_overhead"] = (sum(r["mask_epoch_s"]) / len(r["mask_epoch_s"])) / (sum(unp["finetune_epoch_s"]) / len(unp["finetune_epoch_s"])) - 1
        print(f"{r['run']}: epoch with masks {r['mask_overhead'] * 100:+.1f}% vs the unpruned net's epoch without masks")
print(f"wrote {save(args.out, rows)}")
