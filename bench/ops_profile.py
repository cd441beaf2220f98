"""Where the time goes: onnxruntime's own profiler on a dense model and on it pruned to a FLOPs target, time per
op type (microseconds per run, batch 1, 2 threads) and its ratio, so a speedup short of the FLOP reduction can
be traced to the ops that do not shrink. Prints a table; bench/results/ops_profile_<model>.json.

    .venv/bin/python bench/ops_profile.py [--model torchvision:mobilenet_v2] [--size 224] [--flops 0.5] [--round-to 8]
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from common import save


def profile(path: Path, x: np.ndarray, runs: int) -> dict[str, float]:
    """Mean kernel time per op type (us per run) from onnxruntime's profiler, after a warm-up."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.enable_profiling, so.log_severity_level = 2, True, 3
    so.profile_file_prefix = str(path.with_suffix(""))
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(runs):
        sess.run(None, feed)
    events = json.loads(Path(sess.end_profiling()).read_text())
    out: dict[str, float] = collections.defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            out[e["args"]["op_name"]] += e["dur"] / runs
    return dict(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="torchvision:mobilenet_v2")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--flops", type=float, default=0.5)
    ap.add_argument("--round-to", default="8")
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    import otcompress
    from otcompress.channels.fold_bn import fold_batchnorm
    from otcompress.exporters.onnx import export_onnx
    from otcompress.models import build_model

    shape = [1, 3, args.size, args.size]
    torch.manual_seed(0)
    model = build_model(args.model, {"num_classes": 1000}).eval()
    round_to = args.round_to if args.round_to == "auto" else int(args.round_to)
    small, rep = otcompress.compress(copy.deepcopy(model), shape, [
        {"kind": "fold_bn"}, {"kind": "prune", "flops": args.flops, "round_to": round_to}])
    groups = next(s for s in rep["stages"] if s["kind"] == "prune")["details"]["groups"]
    keep = float(np.mean([g["after"] / g["before"] for g in groups]))
    dense = copy.deepcopy(model)
    fold_batchnorm(dense, torch.zeros(shape))
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    res = {}
    with tempfile.TemporaryDirectory() as td:
        for name, m in (("dense", dense), ("pruned", small)):
            path = Path(td) / f"{name}.onnx"
            export_onnx(m, torch.zeros(shape), path)
            res[name] = profile(path, x, args.runs)
    ops = sorted(set(res["dense"]) | set(res["pruned"]), key=lambda o: -res["dense"].get(o, 0.0))
    print(f"| op | dense us | pruned ({args.flops:.0%} FLOPs) us | ratio |\n|---|---|---|---|")
    for o in ops + ["total"]:
        d = sum(res["dense"].values()) if o == "total" else res["dense"].get(o, 0.0)
        p = sum(res["pruned"].values()) if o == "total" else res["pruned"].get(o, 0.0)
        print(f"| {o} | {d:.1f} | {p:.1f} | {p / d if d else float('nan'):.2f} |")
    print(f"(channels kept per group: {keep:.2f} on average, over {len(groups)} groups)")
    save(f"ops_profile_{args.model.split(':')[-1]}.json", {**vars(args), "us": res, "mean_keep": keep})


if __name__ == "__main__":
    main()
