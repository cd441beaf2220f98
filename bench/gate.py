"""The validation gate against correct and deliberately wrong exports (tests/wrong_exports.py), on real
CIFAR-10 images: vit_tiny_p2 with ToMe, PiToMe and OTPrune (keep 0.9), and ResNet-20 folded and pruned.
Every export is validated with the default gate; the table (bench/results/gate.json, and the README between
the gate markers) shows what it observed and its verdict.

    .venv/bin/python bench/gate.py [--samples 640] [--wrong-samples 64] [--methods tome,pitome,otprune]
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


def judge(reference, exported, x, folder: Path) -> dict:
    """Export `exported`, validate it against `reference` with the default gate; the observed numbers."""
    from otcompress.exporters.onnx import export_onnx
    from otcompress.exporters.onnxruntime import OrtRunner
    from otcompress.exporters.pytorch import TorchRunner
    from otcompress.validation import Gate, validate

    path = folder / "m.onnx"
    export_onnx(exported, torch.zeros(1, 3, 32, 32), path, dynamic_batch=True)
    res = validate(TorchRunner(reference, input_shape=[1, 3, 32, 32]), [OrtRunner(path)], x, Gate()).as_dict()
    ex = next(c for c in res["checks"] if c["check"].startswith("export:"))
    dec = next((c for c in res["checks"] if c["check"].startswith("decisions:")), None)
    return {"passed": res["passed"], "max_abs": ex.get("max_abs"), "max_rel": ex.get("max_rel"),
            "failing_elements": ex.get("failing_elements"), "replayed": ex.get("replayed", False),
            "decision_agreement": dec["observed"] if dec else None, "samples": len(x)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=640)
    ap.add_argument("--wrong-samples", type=int, default=64)
    ap.add_argument("--methods", default="tome,pitome,otprune")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as td:
        folder = Path(td)
        x = images(VIT, args.samples)
        for method in args.methods.split(","):
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
        x = images(CNN, args.samples)
        ref, chosen = cnn_reference()
        rows.append({"model": "resnet20 fold_bn + prune 0.3", "export": "correct", **judge(ref, ref, x, folder)})
        print(rows[-1], flush=True)
        for name, make in WRONG_CNN.items():
            rows.append({"model": "resnet20 fold_bn + prune 0.3", "export": name,
                         **judge(ref, make(ref, chosen), x[: args.wrong_samples], folder)})
            print(rows[-1], flush=True)
    save("gate.json", rows)
    fill("gate", table(rows))
    print(table(rows))


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
