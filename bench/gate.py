"""The validation gate against correct and deliberately wrong exports (tests/wrong_exports.py), on real
CIFAR-10 images: vit_tiny_p2 with ToMe, PiToMe and OTPrune (keep 0.9), ResNet-20 folded and pruned, and the
canvas-trained YOLOv8n of bench/detection.py folded and pruned (where its checkpoint is cached).
Every export is validated with the default gate; the table (bench/results/gate.json, and the README between
the gate markers) shows what it observed and its verdict.

    .venv/bin/python bench/gate.py [--samples 640] [--wrong-samples 64] [--methods tome,pitome,otprune] [--parts vit,cnn,detector]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import save  # noqa: E402
from scripts.fill_readme import fill  # noqa: E402
from tests.wrong_exports import CNN, VIT, WRONG_CNN, WRONG_VIT, applies, cnn_reference, images, vit_reference  # noqa: E402


def judge(reference, exported, x, folder: Path, gate=None) -> dict:
    """Export `exported`, validate it against `reference` with the default gate (or `gate`); the observed
    numbers (of the worst output)."""
    from otcompress.exporters.onnx import export_onnx
    from otcompress.exporters.onnxruntime import OrtRunner
    from otcompress.exporters.pytorch import TorchRunner
    from otcompress.validation import Gate, validate

    path = folder / "m.onnx"
    shape = [1, *x.shape[1:]]
    export_onnx(exported, torch.zeros(shape), path, dynamic_batch=True)
    res = validate(TorchRunner(reference, input_shape=shape), [OrtRunner(path)], x, gate or Gate()).as_dict()
    ex = max((c for c in res["checks"] if c["check"].startswith("export:")),
             key=lambda c: (not c["passed"], c.get("failing_elements") or 0, c.get("max_abs") or 0))
    dec = next((c for c in res["checks"] if c["check"].startswith("decisions:")), None)
    return {"passed": res["passed"], "max_abs": ex.get("max_abs"), "max_rel": ex.get("max_rel"),
            "failing_elements": ex.get("failing_elements"), "replayed": ex.get("replayed", False),
            "decision_agreement": dec["observed"] if dec else None, "samples": len(x)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=640)
    ap.add_argument("--wrong-samples", type=int, default=64)
    ap.add_argument("--methods", default="tome,pitome,otprune", help="token methods ('' for none)")
    ap.add_argument("--parts", default="vit,cnn,detector", help="which models (the others' rows are kept)")
    args = ap.parse_args()
    parts = args.parts.split(",")
    import json

    from common import RESULTS

    earlier = json.loads((RESULTS / "gate.json").read_text()) if (RESULTS / "gate.json").exists() else []
    kind = {"vit": "vit_tiny_p2", "cnn": "resnet20", "detector": "yolov8n"}
    rows = [r for r in earlier if not any(r["model"].startswith(kind[p]) for p in parts)]
    with tempfile.TemporaryDirectory() as td:
        folder = Path(td)
        x = images(VIT, args.samples)
        for method in args.methods.split(",") if "vit" in parts else ():
            ref = vit_reference(method)
            t0 = time.perf_counter()
            rows.append({"model": f"vit_tiny_p2 {method} keep 0.9", "export": "correct", **judge(ref, ref, x, folder)})
            print(rows[-1], f"{time.perf_counter() - t0:.0f} s", flush=True)
            for name, make in WRONG_VIT.items():
                if not applies(name, method):
                    continue
                rows.append({"model": f"vit_tiny_p2 {method} keep 0.9", "export": name,
                             **judge(ref, make(ref), x[: args.wrong_samples], folder)})
                print(rows[-1], flush=True)
        if "cnn" in parts:
            x = images(CNN, args.samples)
            ref, chosen = cnn_reference()
            rows.append({"model": "resnet20 fold_bn + prune 0.3", "export": "correct", **judge(ref, ref, x, folder)})
            print(rows[-1], flush=True)
            for name, make in WRONG_CNN.items():
                rows.append({"model": "resnet20 fold_bn + prune 0.3", "export": name,
                             **judge(ref, make(ref, chosen), x[: args.wrong_samples], folder)})
                print(rows[-1], flush=True)
        if "detector" in parts:
            rows += detector_rows(folder, args.wrong_samples)
    save("gate.json", rows)
    fill("gate", table(rows))
    print(table(rows))


def detector_rows(folder: Path, n: int) -> list[dict]:
    """The trained YOLOv8n (bench/train_detector.py) folded and pruned 30%, correct and wrong, on n test canvases,
    with the detection gate's defaults (atol_scale 1e-5 of each raw output's scale)."""
    from canvas import CACHE, sets
    from detection import SPEC, images as canvases

    from common import SHARED
    from otcompress.models import load
    from otcompress.tasks import TASKS
    from otcompress.validation import Gate
    from tests.wrong_exports import detector_cases

    ckpt = CACHE / "yolov8n_canvas.safetensors"
    if not ckpt.exists():
        print(f"no detector rows: {ckpt} is missing (bench/train_detector.py yolo)")
        return []
    x = canvases(sets(SHARED)["test"], n)[0]
    gate = Gate(**TASKS["detection"].gate_defaults)
    rows = []
    for name, (ref, bad) in detector_cases(lambda: load({**SPEC, "checkpoint": str(ckpt)}), x[:1]).items():
        rows.append({"model": "yolov8n (canvas-trained) fold_bn + prune 0.3", "export": name,
                     **judge(ref, bad, x.numpy(), folder, gate)})
        print(rows[-1], flush=True)
    return rows


def table(rows) -> str:
    lines = ["| model | export | samples | verdict | max abs error | max rel error | failing elements | decisions agree |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        dec = f"{r['decision_agreement']:.4f}" if r["decision_agreement"] is not None else "—"
        lines.append(f"| {r['model']} | {r['export']} | {r['samples']} | {'PASSED' if r['passed'] else '**FAILED**'} | "
                     f"{r['max_abs']:.2e} | {r['max_rel']:.2e} | {r['failing_elements']} | {dec} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
