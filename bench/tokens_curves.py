"""Accuracy against FLOPs of every token-reduction method and form on vit_tiny_p2 (CIFAR-10 test.npz, every
`--every`-th image; 1 = all 10,000): ToMe; the defaults of PiToMe and OTPrune; PiToMe (mergeable 1) with the paper's energy and the public code's (ELU), margin
m0 = 0.9 (the paper's schedule) and 0.75 (the public code's for DeiT), with and without proportional
attention; OTPrune (the paper's gamma 0.01) in drop mode (the paper's selection in every block), in merge mode (the tokens it does not
select merged, size-weighted, into their most similar selected token), and applied once, at one block, as the
paper applies it. Each form is run at the FLOPs of ToMe at keep 0.95 … 0.7 (its keep found by bisection so
its measured FLOPs land within 1% of ToMe's). bench/results/tokens_curves.json, tokens_curves.png and the
README table.

    .venv/bin/python bench/tokens_curves.py [--every 5] [--forms 'tome;otprune merge (every block)'] [--keeps 0.95,0.9,0.8,0.7]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from common import publish, CIFAR_NORM, load, need

from otcompress.metrics import count_flops
from otcompress.tokens.patch import apply_token_reduction

PAPER_PITOME = {"method": "pitome", "mergeable": 1.0}  # every A token of the 2r highest-energy ones merges
PAPER_OTPRUNE = {"method": "otprune", "gamma": 0.01}  # the public code's kernel scale
FORMS = {
    "tome": {"method": "tome"},
    "pitome (default: ELU energy, m0 0.9, mergeable 2)": {"method": "pitome"},
    "otprune (default: merge, gamma 1, every block)": {"method": "otprune"},
    "pitome (paper energy, m0 0.9)": {**PAPER_PITOME, "margin": 0.9, "energy": "paper"},
    "pitome (paper energy, m0 0.75)": {**PAPER_PITOME, "margin": 0.75, "energy": "paper"},
    "pitome (public-code ELU energy, m0 0.9)": {**PAPER_PITOME, "margin": 0.9, "energy": "elu"},
    "pitome (public-code ELU energy, m0 0.75)": {**PAPER_PITOME, "margin": 0.75, "energy": "elu"},
    "pitome (paper energy, m0 0.9, no prop. attention)": {**PAPER_PITOME, "margin": 0.9, "energy": "paper",
                                                          "prop_attn": False},
    "otprune drop (every block)": {**PAPER_OTPRUNE, "mode": "drop"},
    "otprune merge (every block)": {**PAPER_OTPRUNE, "mode": "merge"},
    "otprune once at block 1 (drop)": {**PAPER_OTPRUNE, "mode": "drop", "blocks": [1]},
    "otprune once at block 1 (merge)": {**PAPER_OTPRUNE, "mode": "merge", "blocks": [1]},
    "otprune once at block 3 (merge)": {**PAPER_OTPRUNE, "mode": "merge", "blocks": [3]},
}
SHAPE = (1, 3, 32, 32)


def reduced(base, cfg):
    m = copy.deepcopy(base)
    apply_token_reduction(m, cfg)
    return m.eval()


def flops(m, shape=SHAPE) -> int:
    return count_flops(m, shape)


def matched(base, cfg, target: float, f0: int, shape=SHAPE) -> tuple[dict, float]:
    """cfg with the keep whose FLOPs ratio is closest to `target` (bisection: FLOPs grow with keep)."""
    single = cfg.get("blocks") is not None and len(cfg["blocks"]) == 1
    lo, hi = (0.02 if single or cfg["method"] == "otprune" else 0.5), 1.0
    best = None
    for _ in range(18):
        mid = (lo + hi) / 2
        r = flops(reduced(base, {**cfg, "keep": mid}), shape) / f0
        if best is None or abs(r - target) < abs(best[1] - target):
            best = (mid, r)
        lo, hi = (lo, mid) if r > target else (mid, hi)
    return {**cfg, "keep": round(best[0], 4)}, best[1]


def top1(m, x, y, batch=250) -> float:
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += (m(x[i:i + batch]).argmax(-1) == y[i:i + batch]).sum().item()
    return correct / len(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--keeps", default="0.95,0.9,0.85,0.8,0.75,0.7")
    ap.add_argument("--forms", default=";".join(FORMS), help="form names separated by ';' (names contain commas)")
    ap.add_argument("--out", default="tokens_curves.json")
    args = ap.parse_args()
    from otcompress.data import load_dataset

    torch.set_grad_enabled(False)
    base = load("vit_tiny_p2")
    ds = load_dataset(need("cifar10/test.npz"))
    x, y = ds.batch(slice(None), *CIFAR_NORM)[::args.every], ds.y[::args.every]
    f0 = flops(base)
    rows = [{"form": "original", "keep": 1.0, "flops": 1.0, "top1": top1(base, x, y)}]
    print(rows[-1], flush=True)
    forms = [f.strip() for f in args.forms.split(";") if f.strip()]
    unknown = [f for f in forms if f not in FORMS]
    if unknown:
        raise SystemExit(f"--forms: unknown {unknown}; expected some of {list(FORMS)}")
    for keep in [float(k) for k in args.keeps.split(",")]:
        tome_cfg = {"method": "tome", "keep": keep}
        target = flops(reduced(base, tome_cfg)) / f0
        for form in forms:
            cfg = FORMS[form]
            if form == "tome":
                cfg, ratio = tome_cfg, target
            else:
                cfg, ratio = matched(base, cfg, target, f0)
            t0 = time.perf_counter()
            rows.append({"form": form, "tome_keep": keep, "config": cfg, "flops": ratio, "tome_flops": target,
                         "top1": top1(reduced(base, cfg), x, y), "seconds": round(time.perf_counter() - t0, 1)})
            print(rows[-1], flush=True)
    res = {"images": len(x), "every": args.every, "rows": rows}
    publish(args.out, res, plot, markdown, "tokens-curves")


def markdown(res: dict) -> str:
    keeps = sorted({r["tome_keep"] for r in res["rows"] if "tome_keep" in r}, reverse=True)
    forms = list(dict.fromkeys(r["form"] for r in res["rows"] if "tome_keep" in r))
    head = "| form | " + " | ".join(f"ToMe keep {k} (FLOPs {next(r['tome_flops'] for r in res['rows'] if r.get('tome_keep') == k):.2f})"
                                    for k in keeps) + " |"
    lines = [head, "|---|" + "---|" * len(keeps)]
    for f in forms:
        cells = []
        for k in keeps:
            r = next((r for r in res["rows"] if r["form"] == f and r.get("tome_keep") == k), None)
            cells.append("—" if r is None else f"{100 * r['top1']:.1f} ({r['flops']:.3f})")
        lines.append(f"| {f} | " + " | ".join(cells) + " |")
    orig = res["rows"][0]["top1"]
    return "\n".join(lines) + f"\n\ntop-1 % (measured FLOPs kept); original {100 * orig:.1f}% on {res['images']} images."


def plot(res: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for f in dict.fromkeys(r["form"] for r in res["rows"] if "tome_keep" in r):
        rs = sorted((r for r in res["rows"] if r["form"] == f), key=lambda r: r["flops"])
        ax.plot([r["flops"] for r in rs], [100 * r["top1"] for r in rs], marker="o", ms=3, label=f,
                lw=2.2 if f == "tome" else 1.0)
    ax.axhline(100 * res["rows"][0]["top1"], color="gray", ls=":", label="original")
    ax.set_xlabel("FLOPs kept")
    ax.set_ylabel("top-1 (%)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
