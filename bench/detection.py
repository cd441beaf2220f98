"""Detection benchmark: the YOLOv8n trained on CIFAR-10 canvases (bench/train_detector.py), at 70% and 50% of
its FLOPs: otcompress prune and Intra-Fusion, data-free, with `repair` (512 unlabeled calibration canvases), and
allocated by measured sensitivity (`allocation = "sensitivity"`, the same canvases) then repaired, all with
`round_to = "auto"`,
against Torch-Pruning's own YOLOv8 recipe at the same FLOPs (every C2f replaced by a C2f whose split is two
convolutions, the Detect head ignored, MagnitudePruner with L2 magnitude, pruned in steps until the FLOPs are
reached; no fine-tuning for anyone). Each: mAP50-95 against the original's detections (pseudo ground truth),
true mAP50-95 / mAP50 on the canvases' labels, ONNX size and onnxruntime CPU latency (2 threads, every file
once per round, median of rounds). Side by side in one run;
`bench/results/detection.json`, `detection.png`, the README table.

    .venv/bin/python bench/detection.py [--limit 1000]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from canvas import CACHE, SIZE, sets
from common import figure, publish, SHARED, interleaved_latency

# (channel stage, allocation, repair): data-free, repaired, and allocated by measured sensitivity then repaired
VARIANTS = [("prune", "uniform", False), ("intrafusion", "uniform", False), ("prune", "uniform", True),
            ("intrafusion", "uniform", True), ("prune", "sensitivity", True), ("intrafusion", "sensitivity", True)]
SPEC = {"arch": "ultralytics:yolov8n.yaml", "args": {"num_classes": 10}, "input_shape": [1, 3, SIZE, SIZE]}
DATA_NORM = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}  # ultralytics models take 0..1 images


def images(path: Path, limit: int | None = None):
    z = np.load(path)
    x = torch.from_numpy(z["x"][:limit]).permute(0, 3, 1, 2).float() / 255
    labels = {"boxes": z["boxes"][:limit], "box_classes": z["box_classes"][:limit]}
    return x, labels


def detect(model, x) -> list[dict]:
    from otcompress.outputs import flatten

    out = []
    with torch.no_grad():
        for i in range(0, len(x), 100):
            out += model.decode_detections(flatten(model(x[i:i + 100])))
    return out


def score(model, x, labels, original_dets) -> dict:
    from otcompress.tasks.detection import label_targets, mean_ap, pseudo_truth

    d = detect(model, x)
    truth = mean_ap(d, label_targets(labels))
    return {"map50_95_vs_original": mean_ap(d, pseudo_truth(original_dets))["map"], "map50_95": truth["map"],
            "map50": truth["map_50"]}


def onnx_row(model, tmp: Path) -> dict:
    """Exported now (dynamic batch), timed later with every other row's file (interleaved)."""
    from otcompress.exporters.onnx import export_onnx

    path = tmp / f"m{time.perf_counter_ns()}.onnx"
    export_onnx(model, torch.zeros(1, 3, SIZE, SIZE), path, dynamic_batch=True)
    return {"onnx_mb": path.stat().st_size / 1e6, "onnx": path}


# ---- Torch-Pruning's YOLOv8 recipe -------------------------------------------------------------------
class C2fSplit(nn.Module):
    """A C2f whose `cv1(x).chunk(2, 1)` is two convolutions (the first and second halves of cv1's output), so
    Torch-Pruning's dependency graph can follow it (what its YOLOv8 example's C2f_v2 does)."""

    def __init__(self, c2f):
        super().__init__()
        from ultralytics.nn.modules.conv import Conv

        c = c2f.c
        self.c, self.m, self.cv2 = c, c2f.m, c2f.cv2
        self.cv0, self.cv1 = (copy.deepcopy(c2f.cv1) for _ in range(2))
        for conv, part in ((self.cv0, slice(0, c)), (self.cv1, slice(c, 2 * c))):
            assert isinstance(conv, Conv)
            conv.conv.weight = nn.Parameter(c2f.cv1.conv.weight[part].clone())
            conv.conv.out_channels = c
            bn = conv.bn
            for k in ("weight", "bias"):
                setattr(bn, k, nn.Parameter(getattr(c2f.cv1.bn, k)[part].clone()))
            bn.running_mean, bn.running_var = c2f.cv1.bn.running_mean[part].clone(), c2f.cv1.bn.running_var[part].clone()
            bn.num_features = c

    def forward(self, x):
        y = [self.cv0(x), self.cv1(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


def torch_pruning_recipe(raw, target: float) -> nn.Module:
    """Torch-Pruning's YOLOv8 recipe on a copy of the raw ultralytics model, pruned in steps to `target` FLOPs."""
    import torch_pruning as tp
    from ultralytics.nn.modules.block import C2f

    model = copy.deepcopy(raw).eval()
    for name, m in list(model.named_modules()):
        for child, sub in list(m.named_children()):
            if type(sub) is C2f:
                new = C2fSplit(sub)
                for attr in ("f", "i", "type", "np"):  # ultralytics' layer bookkeeping
                    if hasattr(sub, attr):
                        setattr(new, attr, getattr(sub, attr))
                setattr(m, child, new)
    x = torch.zeros(1, 3, SIZE, SIZE)
    head = model.model[-1]
    base, _ = tp.utils.count_ops_and_params(model, x)
    pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=0.95, iterative_steps=400, ignored_layers=[head])
    for _ in range(400):
        ops, _ = tp.utils.count_ops_and_params(model, x)
        if ops / base <= target:
            break
        pruner.step()
    return model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--targets", default="0.7,0.5")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    import otcompress
    from otcompress.metrics import count_flops
    from otcompress.models import load
    from otcompress.models.source import SOURCES

    ckpt = CACHE / "yolov8n_canvas.safetensors"
    if not ckpt.exists():
        raise SystemExit(f"{ckpt} is missing: train it first (bench/train_detector.py yolo)")
    paths = sets(SHARED)
    x, labels = images(paths["test"], args.limit)
    spec = {**SPEC, "checkpoint": str(ckpt)}
    original = load(spec)
    orig_dets = detect(original, x)
    f0 = count_flops(original, SPEC["input_shape"])
    data = {"eval": str(paths["test"]), "calib": str(paths["calib"]), **DATA_NORM, "limit": args.limit}
    rows = []
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        rows.append({"method": "original", "flops": 1.0, **score(original, x, labels, orig_dets), **onnx_row(original, td)})
        print(rows[-1], flush=True)
        for target in [float(t) for t in args.targets.split(",")]:
            for channel, allocation, repair in VARIANTS:
                stages = [{"kind": "fold_bn"}, {"kind": channel, "flops": target, "allocation": allocation,
                                                 "round_to": "auto"}]
                if repair:
                    stages.append({"kind": "repair", "samples": 512})
                t0 = time.perf_counter()
                small, rep = otcompress.compress(original, SPEC["input_shape"], stages, data=data, name="det",
                                                 source=SPEC["arch"], args=SPEC["args"], checkpoint=str(ckpt))
                shrink = next(s for s in rep["stages"] if s["kind"] == channel)["details"]
                rows.append({"method": channel + ("" if allocation == "uniform" else f", {allocation}")
                             + (" + repair" if repair else ""), "target": target, "round_to": shrink["round_to"],
                             "flops": count_flops(small, SPEC["input_shape"]) / f0,
                             "seconds": time.perf_counter() - t0, **score(small, x, labels, orig_dets),
                             **onnx_row(small, td)})
                print(rows[-1], flush=True)
            tasks = __import__("otcompress.models.ultralytics", fromlist=["_import"])._import()
            raw = tasks.DetectionModel("yolov8n.yaml", nc=10, verbose=False)
            from otcompress.models.checkpoint import load_weights, read_state_dict

            load_weights(raw, read_state_dict(ckpt), str(ckpt))
            t0 = time.perf_counter()
            pruned = torch_pruning_recipe(raw.eval(), target)
            tp_model = SOURCES["ultralytics"].adapt(pruned, torch.zeros(1, 3, SIZE, SIZE))
            rows.append({"method": "Torch-Pruning YOLOv8 recipe (C2f split, Detect ignored, L2 magnitude)",
                         "target": target, "flops": count_flops(tp_model, SPEC["input_shape"]) / f0,
                         "seconds": time.perf_counter() - t0, **score(tp_model, x, labels, orig_dets),
                         **onnx_row(tp_model, td)})
            print(rows[-1], flush=True)
        for r, lat in zip(rows, interleaved_latency([r.pop("onnx") for r in rows], [1, 3, SIZE, SIZE], args.rounds)):
            r.update(lat)
    card = json.loads(ckpt.with_suffix(".json").read_text()) if ckpt.with_suffix(".json").exists() else {}
    res = {"model": "yolov8n (canvas-trained)", "images": len(x), "training": {k: card.get(k) for k in
           ("steps", "minutes", "images", "test_map50_95", "test_map50")}, "rows": rows}
    publish("detection.json", res, plot, markdown, "detection")


def markdown(res: dict) -> str:
    lines = ["| method | FLOPs kept | round_to | mAP50-95 vs original | true mAP50-95 | true mAP50 | ONNX MB | ORT ms (b1 / b32) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['method']} | {r['flops']:.3f} | {r.get('round_to', '—')} | {r['map50_95_vs_original']:.3f} | {r['map50_95']:.3f} | "
                     f"{r['map50']:.3f} | {r['onnx_mb']:.2f} | {r['latency_b1_ms']:.2f} / {r['latency_b32_ms']:.1f} |")
    return "\n".join(lines) + f"\n\n({res['images']} test canvases; {res['model']}.)"


def plot(res: dict, path: Path) -> None:
    with figure(path, "FLOPs kept", "true mAP50-95 (test canvases)") as ax:
        groups = {}
        for r in res["rows"][1:]:
            groups.setdefault(r["method"], []).append(r)
        for name, rs in groups.items():
            ax.plot([r["flops"] for r in rs], [r["map50_95"] for r in rs], marker="o", label=name[:40])
        ax.axhline(res["rows"][0]["map50_95"], color="gray", ls=":", label="original")

if __name__ == "__main__":
    main()
