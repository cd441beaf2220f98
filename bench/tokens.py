"""Token reduction benchmarks.

fidelity: vit_tiny_p2 off the shelf on CIFAR-10 test.npz: top-1 and FLOPs for keep in {0.95 .. 0.7} and each
method, plus ToMe with a constant r at (nearly) the FLOPs of each PiToMe point; plotted.
throughput: DeiT-S-shaped ViT at 224x224 (random weights), images/s on the GPU for the original, ToMe r = 13 and
the other methods at matched FLOPs, and the share of each block's time spent merging (eager). With --compile
images/s are measured on torch.compile'd models (the merge's small ops fused; OTPrune's loop one scan) and
saved as tokens_throughput_compiled.json.

    python bench/tokens.py fidelity [--limit N]      (GPU if available)
    python bench/tokens.py throughput [--compile]    (needs CUDA)
"""

import argparse
import copy
import time

import torch

from common import CIFAR_NORM, load, merge_share, need, save

from otcompress.metrics import count_flops
from otcompress.tokens import patch as P
from otcompress.models import build_model

ap = argparse.ArgumentParser()
ap.add_argument("what", choices=["fidelity", "throughput"])
ap.add_argument("--limit", type=int, default=None)
ap.add_argument("--batch", type=int, default=256)
ap.add_argument("--compile", action="store_true")
args = ap.parse_args()
dev = "cuda" if torch.cuda.is_available() else "cpu"
torch.set_grad_enabled(False)
METHODS = ("tome", "pitome", "otprune")


def reduced(base, cfg):
    m = copy.deepcopy(base)
    P.apply_token_reduction(m, cfg)
    return m.eval()


def flops(m, shape):
    return count_flops(copy.deepcopy(m).cpu(), shape)


if args.what == "fidelity":
    from otcompress.data import load_dataset

    base = load("vit_tiny_p2")
    ds = load_dataset(need("cifar10/test.npz"), args.limit)
    x, y = ds.batch(slice(None), *CIFAR_NORM), ds.y
    shape = (1, 3, 32, 32)

    def top1(m):
        m = m.to(dev)
        correct = 0
        with torch.autocast("cuda", torch.bfloat16, enabled=False):
            for i in range(0, len(x), 500):
                correct += (m(x[i:i + 500].to(dev)).argmax(-1).cpu() == y[i:i + 500]).sum().item()
        return correct / len(x)

    f0 = flops(base, shape)
    rows = [{"method": "original", "keep": 1.0, "top1": top1(base), "flops": f0}]
    print(rows[-1], flush=True)
    for keep in (0.95, 0.9, 0.85, 0.8, 0.7):
        for method in METHODS:
            m = reduced(base, {"method": method, "keep": keep})
            t0 = time.perf_counter()
            rows.append({"method": method, "keep": keep, "top1": top1(m), "flops": flops(m, shape),
                         "seconds": time.perf_counter() - t0})
            print(rows[-1], flush=True)
        target = next(r["flops"] for r in rows if r["method"] == "pitome" and r["keep"] == keep)
        lo, hi = 1, 128  # FLOPs fall as r grows: bisect for the r closest to the PiToMe point
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if flops(reduced(base, {"method": "tome", "r": mid}), shape) > target else (lo, mid)
        best = min((lo, hi), key=lambda r: abs(flops(reduced(base, {"method": "tome", "r": r}), shape) - target))
        m = reduced(base, {"method": "tome", "r": best})
        rows.append({"method": "tome-const-r", "r": best, "keep": keep, "top1": top1(m), "flops": flops(m, shape)})
        print(rows[-1], flush=True)
    path = save("tokens_fidelity.json", {"samples": len(x), "device": dev, "rows": rows})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in METHODS + ("tome-const-r",):
        rs = [r for r in rows if r["method"] == method]
        ax.plot([r["flops"] / 1e9 for r in rs], [100 * r["top1"] for r in rs], marker="o", label=method)
    ax.axhline(100 * rows[0]["top1"], color="gray", ls=":", label="original")
    ax.set_xlabel("GFLOPs per image")
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"vit_tiny_p2, CIFAR-10 test ({len(x)} images), off the shelf")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=110)
    print(f"wrote {path}")
else:
    assert dev == "cuda", "throughput needs a GPU"
    base = build_model("vit", {"config": "deit_small"}).to(dev).eval()
    shape = (1, 3, 224, 224)
    x = torch.randn(args.batch, 3, 224, 224, device=dev)

    def ips(m, reps=20):
        m = torch.compile(m) if args.compile else m
        with torch.autocast("cuda", torch.bfloat16):
            for _ in range(5):
                m(x)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(reps):
                m(x)
            torch.cuda.synchronize()
        return reps * len(x) / (time.perf_counter() - t0)

    f0 = flops(base, shape)
    rows = [{"method": "original", "flops": f0, "images_per_s": ips(base)}]
    tome13 = reduced(base, {"method": "tome", "r": 13})
    ft = flops(tome13, shape)
    rows.append({"method": "tome", "r": 13, "flops": ft, "images_per_s": ips(tome13)})
    for method in ("pitome", "otprune"):
        keep = min((k / 100 for k in range(80, 100)),
                   key=lambda k: abs(flops(reduced(base, {"method": method, "keep": k}), shape) - ft))
        m = reduced(base, {"method": method, "keep": keep})
        rows.append({"method": method, "keep": keep, "flops": flops(m, shape), "images_per_s": ips(m, 5 if method == "otprune" else 20)})
    for r in rows:
        r["flop_reduction"] = f0 / r["flops"]
        r["speedup"] = r["images_per_s"] / rows[0]["images_per_s"]
        r["speedup_over_flop_reduction"] = r["speedup"] / r["flop_reduction"]
        print(r, flush=True)
    shares = {}  # share of block time spent in the merge (eager)
    for r in rows[1:]:
        cfg = {k: r[k] for k in ("r", "keep") if k in r}
        with torch.autocast("cuda", torch.bfloat16):
            ms = merge_share(reduced(base, {"method": r["method"], **cfg}), x, reps=3)
        shares[r["method"]] = ms["merge_share"]
        print(f"{r['method']}: merge {ms['merge_ms']:.2f} ms of {ms['blocks_ms']:.2f} ms in blocks "
              f"({100 * ms['merge_share']:.1f}%)", flush=True)
    name = "tokens_throughput_compiled.json" if args.compile else "tokens_throughput.json"
    print(f"wrote {save(name, {'batch': args.batch, 'gpu': torch.cuda.get_device_name(0), 'compiled': args.compile, 'rows': rows, 'merge_share': shares})}")
