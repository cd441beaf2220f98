"""Latency budgets and sensitivity allocation, side by side in one run. On the CIFAR checkpoints (resnet20,
resnet56, vgg11_bn_half, mobilenetv2) at a measured onnxruntime CPU latency of 0.7 and 0.5 of the original's
(2 threads, at --batch): `prune` with uniform, global and sensitivity allocation, `intrafusion` with
sensitivity allocation, and `prune` uniform with importance = "reconstruction", each followed by `repair` (512
unlabeled training images), all with `round_to = 8`;
and Torch-Pruning (L1 magnitude, round_to 8) at the same measured latency (its pruning ratio bisected on
measurements). On ImageNet-shaped torchvision MobileNetV2 and ResNet-50 (224x224, random weights: latency
only), `prune` uniform data-free. Then, at 50% FLOPs, speedup over FLOP reduction with round_to 1 and "auto".
A target below the model's measured floor is refused by the stage, and the row says so with the floor.

Every model is timed again at the end as the stage times its target (exported at --batch, every model of one
checkpoint once per round, median of rounds): that is the measured-latency column, and the target is met when it
is within 10% of the target; the ms columns time dynamic-batch exports at batch 1 and 32 the same way. Top-1 on --limit CIFAR-10 test
images. bench/results/NAME.json, NAME.png, the README table between the NAME markers (--out NAME).

    .venv/bin/python bench/latency.py [--models resnet56,tv_mobilenet_v2] [--targets 0.7,0.5] [--batch 1|32]
        [--rounds 5] [--out latency]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch

from common import publish, MODELS, SHARED, eval_data, interleaved_latency, load

IMAGENET = {"tv_mobilenet_v2": ("torchvision:mobilenet_v2", {"num_classes": 1000}),
            "tv_resnet50": ("torchvision:resnet50", {"num_classes": 1000})}
CIFAR = ["resnet20", "resnet56", "vgg11_bn_half", "mobilenetv2"]
# (channel stage, allocation, importance) with repair, on the CIFAR checkpoints
VARIANTS = [("prune", "uniform", "l1"), ("prune", "global", "l1"), ("prune", "sensitivity", "l1"),
            ("intrafusion", "sensitivity", "l1"), ("prune", "uniform", "reconstruction")]
CALIB = 512


def shape_of(name: str) -> list[int]:
    return [1, 3, 224, 224] if name in IMAGENET else [1, 3, 32, 32]


def build(name: str):
    if name in IMAGENET:
        from otcompress.models import build_model

        arch, args = IMAGENET[name]
        torch.manual_seed(0)
        return build_model(arch, args).eval(), arch, args
    arch, args, *_ = MODELS[name]
    return load(name), arch, args


def export(model, shape, folder: Path) -> Path:
    from otcompress.exporters.onnx import export_onnx

    path = folder / f"m{time.perf_counter_ns()}.onnx"
    export_onnx(model, torch.zeros(shape), path, dynamic_batch=True)
    return path


def top1(name, model, x, y) -> float | None:
    if x is None:
        return None
    from otcompress.metrics import predict

    return float((predict(model, x).argmax(-1) == y).float().mean())


def torch_pruning_at(model, shape, target_ms: float, dense_ms: float, batch: int = 1) -> tuple[torch.nn.Module, float]:
    """Torch-Pruning at a measured latency: its one pruning ratio bisected until the measured latency is closest
    to target_ms. MagnitudePruner (L1 group importance, round_to 8); on option-A ResNets (block-internal scope,
    whose zero-padded shortcuts its pruner mis-tracks: the classifier's input is cut to a width the last stage
    never produces) the same importance and rounding applied through its DependencyGraph to each block's conv1,
    as a Torch-Pruning user does for a model its pruner does not handle."""
    import torch_pruning as tp

    from otcompress.channels.latency import measure_model

    x = torch.zeros(shape)
    last = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1]
    imp = tp.importance.MagnitudeImportance(p=1)

    def pruned(r):
        m = copy.deepcopy(model)
        if getattr(model, "otcompress_prune_scope", None) == "internal":
            graph = tp.DependencyGraph().build_dependency(m, example_inputs=x)
            for conv in [mod for n, mod in m.named_modules() if n.endswith(".conv1")]:
                n = conv.out_channels
                keep = min(n, max(8, int(round(n * (1 - r) / 8)) * 8))
                scores = imp(graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(n))))
                drop = scores.argsort(descending=True)[keep:].tolist()
                if drop:
                    graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=drop).prune()
        else:
            tp.pruner.MagnitudePruner(m, x, importance=imp, pruning_ratio=r, round_to=8,
                                      ignored_layers=[m.get_submodule(last)]).step()
        return m, measure_model(m, x, batch=batch)

    lo, hi, best = 0.0, 0.95, (model, dense_ms)
    for _ in range(7):
        mid = (lo + hi) / 2
        m, ms = pruned(mid)
        if abs(ms - target_ms) < abs(best[1] - target_ms):
            best = (m, ms)
        lo, hi = (mid, hi) if ms > target_ms else (lo, mid)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(CIFAR + list(IMAGENET)))
    ap.add_argument("--targets", default="0.7,0.5")
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, choices=(1, 32), default=1, help="the batch the latency target is at")
    ap.add_argument("--out", default="latency", help="results name (bench/results/NAME.json) and README marker")
    ap.add_argument("--variants", default=";".join(",".join(v) for v in VARIANTS),
                    help="our methods on the CIFAR checkpoints, ';'-separated 'stage,allocation,importance'")
    ap.add_argument("--compare-at", default=None, help="measured latencies at which every method's top-1 is "
                    "interpolated along its own points (default: the targets)")
    ap.add_argument("--no-anchor", action="store_true", help="leave out Torch-Pruning")
    args = ap.parse_args()
    variants_cifar = [tuple(v.split(",")) for v in args.variants.split(";")]
    import otcompress
    from otcompress.channels.latency import measure_model, measure_models
    from otcompress.errors import OTCError
    from otcompress.metrics import count_flops

    calib_path = SHARED / "cifar10" / "train-imagefolder.tar.gz"
    rows, files, kept = [], [], {}
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        for name in args.models.split(","):
            model, arch, margs = build(name)
            shape = shape_of(name)
            x, y = eval_data(name, args.limit) if name in MODELS else (None, None)
            f0 = count_flops(model, shape)
            norm = MODELS[name][4] if name in MODELS else ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
            data = {"calib": str(calib_path), "mean": norm[0], "std": norm[1]}

            def add(method, small, target=None, **extra):
                rows.append({"model": name, "method": method, "target": target, "top1": top1(name, small, x, y),
                             "flops": count_flops(small, shape) / f0, **extra})
                files.append((len(rows) - 1, export(small, shape, td)))
                kept[len(rows) - 1] = small
                print({k: v for k, v in rows[-1].items()}, flush=True)

            add("original", model, flops_target=None)
            dense_ms = None
            for target in [float(t) for t in args.targets.split(",")]:
                variants = variants_cifar if name in MODELS else [("prune", "uniform", "l1")]
                for channel, allocation, importance in variants:
                    stages = [{"kind": "fold_bn"}, {"kind": channel, "latency": target, "allocation": allocation,
                                                    "importance": importance, "round_to": 8, "latency_batch": args.batch}]
                    if name in MODELS:
                        stages.append({"kind": "repair", "samples": CALIB})
                    t0 = time.perf_counter()
                    method = (f"{channel}, {allocation}" + (f", {importance}" if importance != "l1" else "")
                              + (" + repair" if name in MODELS else ""))
                    try:
                        small, rep = otcompress.compress(copy.deepcopy(model), shape, stages,
                                                         data=data if name in MODELS else None, name=name, source=arch,
                                                         args=margs)
                    except OTCError as e:  # a target below the measured floor: refused, and the row says so
                        rows.append({"model": name, "method": method, "target": target, "error": str(e)})
                        print(rows[-1], flush=True)
                        continue
                    lat = next(s for s in rep["stages"] if s["kind"] == channel)["details"]["latency"]
                    dense_ms = lat["dense_ms"]
                    add(method, small, target,
                        stage_measured=lat["measured"], attempts=len(lat["attempts"]),
                        round_to=next(s for s in rep["stages"] if s["kind"] == channel)["details"]["round_to"],
                        seconds=time.perf_counter() - t0)
                if name in MODELS and not args.no_anchor:
                    t0 = time.perf_counter()
                    method = "Torch-Pruning MagnitudePruner (L1, round_to 8)"
                    dense_ms = dense_ms or measure_model(model, torch.zeros(shape), batch=args.batch)
                    try:
                        tp_model, _ = torch_pruning_at(copy.deepcopy(model), shape, target * dense_ms, dense_ms, args.batch)
                    except Exception as e:  # the anchor's own failure is a result: recorded, not hidden
                        rows.append({"model": name, "method": method, "target": target,
                                     "error": f"{type(e).__name__}: {str(e)[:120]}"})
                        print(rows[-1], flush=True)
                        continue
                    add(method, tp_model, target, seconds=time.perf_counter() - t0)
            if name in ("mobilenetv2", "resnet56", "tv_mobilenet_v2"):
                for round_to in (1, "auto"):
                    small, rep = otcompress.compress(copy.deepcopy(model), shape, [
                        {"kind": "fold_bn"}, {"kind": "prune", "flops": 0.5, "round_to": round_to}], name=name, source=arch,
                        args=margs)
                    add(f"prune, 50% FLOPs, round_to {round_to}", small, flops_target=0.5,
                        round_to=next(s for s in rep["stages"] if s["kind"] == "prune")["details"]["round_to"])
        by_model = {}
        for i, path in files:
            by_model.setdefault(rows[i]["model"], []).append((i, path))
        for name, items in by_model.items():  # each model's files interleaved with each other
            for (i, _), lat in zip(items, interleaved_latency([p for _, p in items], shape_of(name), args.rounds)):
                rows[i].update(lat)
            # the ratio column: measured as the stage measures its target (exported at --batch, interleaved)
            ms = measure_models([kept[i] for i, _ in items], torch.zeros(shape_of(name)), threads=2, batch=args.batch,
                                rounds=args.rounds)
            for (i, _), t in zip(items, ms):
                rows[i]["latency_ms"] = t
    for r in rows:
        if "error" in r:
            continue
        dense = next(o for o in rows if o["model"] == r["model"] and o["method"] == "original")
        r["latency"] = r["latency_ms"] / dense["latency_ms"]
        r["speedup"] = dense["latency_ms"] / r["latency_ms"]
        r["speedup_over_flop_reduction"] = r["speedup"] * r["flops"]
        if r["target"]:
            r["within_10_percent"] = abs(r["latency"] / r["target"] - 1) <= 0.10
    compare = [float(t) for t in (args.compare_at or args.targets).split(",")]
    res = {"rows": rows, "threads": 2, "batch": args.batch, "calibration_images": CALIB, "rounds": args.rounds,
           "limit": args.limit, "equal_latency": equal_latency(rows, compare)}
    publish(f"{args.out}.json", res, plot, markdown, args.out)


def markdown(res: dict) -> str:
    lines = ["| model | method | latency target | measured latency | within 10% | top-1 % | FLOPs kept | ms b1 / b32 "
             "| speedup / FLOP reduction |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        if "error" in r:
            why = r["error"].split("): ", 1)[-1].split(" (onnxruntime")[0]  # the refusal's reason, without the paths
            lines.append(f"| {r['model']} | {r['method']} | {r['target']:.2f} | not run: {why} | — | — | — | — | — |")
            continue
        t1 = "—" if r["top1"] is None else f"{100 * r['top1']:.2f}"
        tgt = f"{r['target']:.2f}" if r["target"] else "—"
        ok = {True: "yes", False: "**no**"}.get(r.get("within_10_percent"), "—")
        lines.append(f"| {r['model']} | {r['method']} | {tgt} | {r['latency']:.3f} | {ok} | {t1} | {r['flops']:.3f} | "
                     f"{r['latency_b1_ms']:.2f} / {r['latency_b32_ms']:.1f} | {r['speedup_over_flop_reduction']:.2f} |")
    scored = any(r.get("top1") is not None for r in res["rows"])
    return "\n".join(lines) + wins(res["rows"]) + (
        f"\n\n(onnxruntime CPU, 2 threads, latency targets at batch {res['batch']}; measured latency: every model "
        "exported at that batch as the stage measures it and timed again at the end, every model of a checkpoint once "
        "per round, median of rounds; ms columns: dynamic-batch exports; speedup at the target's batch; " + (f"top-1 on {res.get('limit', 1000)} CIFAR-10 test images.)" if scored
                                                 else "random weights: latency only.)")) + equal_latency_md(res)


def interpolate(points: list[tuple[float, float]], at: float) -> float | None:
    """top-1 at measured latency `at` along a method's own (latency, top-1) points, linear between the two that
    bracket it; None outside their range (no extrapolation)."""
    pts = sorted(points)
    for (l0, a0), (l1, a1) in zip(pts, pts[1:]):
        if l0 <= at <= l1:
            return a0 if l1 == l0 else a0 + (a1 - a0) * (at - l0) / (l1 - l0)
    return next((a for lat, a in pts if abs(lat - at) < 1e-9), None)


def equal_latency(rows: list[dict], compare: list[float]) -> list[dict]:
    """Every scored method's top-1 at the same measured latencies: each run lands near its target, not on it
    (measurement noise moves a landing by a few percent, and on the small CIFAR nets that is several points of
    FLOPs and of top-1), so methods are compared along their own curves through the points they landed on."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        rs = [r for r in rows if r["model"] == model and r.get("target") and r.get("top1") is not None and "error" not in r]
        for at in compare:
            got = {}
            for method in dict.fromkeys(r["method"] for r in rs):
                v = interpolate([(r["latency"], r["top1"]) for r in rs if r["method"] == method], at)
                if v is not None:
                    got[method] = v
            if got:
                out.append({"model": model, "latency": at, "top1": got})
    return out


def equal_latency_md(res: dict) -> str:
    eq = res.get("equal_latency") or []
    if not eq:
        return ""
    methods = list(dict.fromkeys(m for e in eq for m in e["top1"]))
    lines = ["", "", "Top-1 % at the same measured latency, along each method's own points (— where its points do not "
             "bracket that latency):", "", "| model | measured latency | " + " | ".join(methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for e in eq:
        cells = [f"{100 * e['top1'][m]:.2f}" if m in e["top1"] else "—" for m in methods]
        lines.append(f"| {e['model']} | {e['latency']:.2f} | " + " | ".join(cells) + " |")
    verdicts = []
    for e in eq:
        t = e["top1"]
        alloc = {a: t.get(f"prune, {a} + repair") for a in ("uniform", "global", "sensitivity")}
        if None in alloc.values():
            continue
        line = f"{e['model']} at {e['latency']:.2f}: best allocation {max(alloc, key=lambda a: alloc[a])}"
        fused = t.get("intrafusion, sensitivity + repair")
        if fused is not None:
            line += f"; Intra-Fusion {'beats' if fused > alloc['sensitivity'] else 'does not beat'} prune"
        verdicts.append(line)
    return "\n".join(lines) + (("\n\n" + "; ".join(verdicts) + ".") if verdicts else "")


def wins(rows: list[dict]) -> str:
    """Per checkpoint and target, which allocation + repair scored best (l1 importance), Intra-Fusion against prune
    (sensitivity allocation), and the reconstruction importance against l1 (uniform allocation)."""
    got = {(r["model"], r["target"], r["method"]): r.get("top1") for r in rows if r.get("top1") is not None}
    out = []
    for model, target in dict.fromkeys((m, t) for m, t, _ in got if t):
        top = {a: got.get((model, target, f"prune, {a} + repair")) for a in ("uniform", "global", "sensitivity")}
        if None in top.values():
            continue
        line = f"{model} at {target:.2f}: best allocation {max(top, key=lambda a: top[a])}"
        fused, rec = (got.get((model, target, f"{k} + repair")) for k in ("intrafusion, sensitivity",
                                                                            "prune, uniform, reconstruction"))
        if fused is not None:
            line += (f"; Intra-Fusion {'beats' if fused > top['sensitivity'] else 'does not beat'} prune"
                     f" ({100 * fused:.1f} vs {100 * top['sensitivity']:.1f})")
        if rec is not None:
            line += f"; reconstruction importance {100 * rec:.1f} vs l1 {100 * top['uniform']:.1f} (uniform)"
        out.append(line)
    return ("\n\n" + "; ".join(out) + ".") if out else ""


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [m for m in dict.fromkeys(r["model"] for r in res["rows"]) if m in MODELS]
    if not models:
        return
    fig, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 3.6), squeeze=False)
    for ax, m in zip(axes[0], models):
        rs = [r for r in res["rows"] if r["model"] == m and r.get("target")]
        for method in dict.fromkeys(r["method"] for r in rs):
            pts = sorted((r["latency"], 100 * r["top1"]) for r in rs if r["method"] == method and "error" not in r)
            if not pts:
                continue
            ax.plot(*zip(*pts), marker="o", label=method[:44])
        dense = next(r for r in res["rows"] if r["model"] == m and r["method"] == "original")
        ax.axhline(100 * dense["top1"], color="gray", ls=":")
        ax.set_title(m)
        ax.set_xlabel("measured latency (fraction of original)")
        ax.set_ylabel("top-1 %")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
