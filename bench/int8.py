"""INT8 benchmark, side by side in one run: resnet56, vgg11_bn_half, mobilenetv2 and vit_tiny_p2, each dense
(BatchNorm folded) and shrunk (Intra-Fusion to 50% of the FLOPs + repair on 512 unlabeled training images; the
ViT: ToMe at keep 0.9, ~54% of the FLOPs), each as FP32 ONNX and quantized on the same 512 calibration images
by: otcompress with its fixed defaults, otcompress `target = "auto"`, onnxruntime's `quantize_static` defaults,
NNCF's `nncf.quantize` on the ONNX model, and NVIDIA Model Optimizer's ONNX PTQ (in the interpreter
OTC_MODELOPT_PYTHON names). Top-1 on the 10,000 test images (the ResNets also on their 932 lossless ones),
agreement and normalised squared error against the FP32 model, our top-1 minus every other row's on the same
images with a 95% interval, file size, onnxruntime CPU latency at batch 1 and 32 (2 threads, rounds
interleaved across all files, median of rounds), calibration seconds. bench/results/int8.json, int8.png and
the README table.

    .venv/bin/python bench/int8.py [--models resnet56,mobilenetv2] [--every 1] [--rounds 5] [--work DIR]

With --work, every exported and quantized file and every row's scores are kept there and reused by a rerun (a run
that was cut short resumes where it stopped; the latency of every file is measured again, interleaved).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import figure, publish, MODELS, SHARED, eval_data, interleaved_latency, load, need

CALIB = 512


def calibration(name: str) -> np.ndarray:
    from otcompress.data import sample_dataset

    norm = MODELS[name][4]
    ds = sample_dataset(SHARED / "cifar10" / "train-imagefolder.tar.gz", CALIB, seed=0)
    return ds.batch(slice(None), *norm).numpy()


VARIANTS = {"cnn": ("dense", "shrunk (Intra-Fusion 50% FLOPs + repair)"), "vit": ("dense", "shrunk (ToMe keep 0.9)")}


def fp32_models(name: str, calib: np.ndarray) -> dict[str, torch.nn.Module]:
    import otcompress
    from otcompress.channels.fold_bn import fold_batchnorm

    model = load(name)
    arch, args, ckpt, data, norm = MODELS[name]
    if name.startswith("vit"):
        from otcompress.tokens.patch import apply_token_reduction

        small = copy.deepcopy(model)
        apply_token_reduction(small, {"method": "tome", "keep": 0.9})
        return dict(zip(VARIANTS["vit"], (model, small.eval())))
    dense = copy.deepcopy(model)
    fold_batchnorm(dense, torch.zeros(1, 3, 32, 32))
    data = {"calib": str(SHARED / "cifar10" / "train-imagefolder.tar.gz"), "mean": norm[0], "std": norm[1]}
    small, _ = otcompress.compress(model, [1, 3, 32, 32], [{"kind": "fold_bn"}, {"kind": "intrafusion", "flops": 0.5},
                                                           {"kind": "repair", "samples": CALIB}], data=data, source=arch,
                                   args=args)
    return dict(zip(VARIANTS["cnn"], (dense.eval(), small.eval())))


def run(path: Path, x: np.ndarray) -> np.ndarray:
    from otcompress.quantize.search import run as ort_run

    return next(iter(ort_run(path, x).values()))


def ours(fp32: Path, out: Path, calib: np.ndarray, target: str) -> tuple[Path, dict]:
    from otcompress.quantize.build import float_by_rule
    from otcompress.quantize.search import choose
    from otcompress.quantize.settings import DEFAULTS, TARGETS, Settings
    import onnx

    held, cal = calib[::4], calib[[i for i in range(len(calib)) if i % 4]]
    given = Settings(DEFAULTS["calibration"], DEFAULTS["scheme"], DEFAULTS["per_channel"], DEFAULTS["reduce_range"])
    floats = float_by_rule(onnx.load(str(fp32), load_external_data=False), {})
    score = lambda want, got: float((next(iter(want.values())).argmax(1) == next(iter(got.values())).argmax(1)).mean())  # noqa: E731
    choice = choose(fp32, out.parent / f"work-{out.stem}", cal, held, given, TARGETS[target], floats, score,
                    DEFAULTS["min_agreement"], DEFAULTS["max_float"], True)
    choice.quantized.path.replace(out)
    return out, {"settings": choice.quantized.settings.label, "float": len(choice.quantized.float_nodes),
                 "fallback": len(choice.fallback)}


class Reader:
    def __init__(self, x):
        self.it = iter([{"input": x[i:i + 1]} for i in range(len(x))])

    def get_next(self):
        return next(self.it, None)


def ort_defaults(fp32: Path, out: Path, calib: np.ndarray) -> tuple[Path, dict]:
    from onnxruntime.quantization import QuantFormat, quantize_static

    quantize_static(str(fp32), str(out), Reader(calib), quant_format=QuantFormat.QDQ)
    return out, {}


def nncf_quantize(fp32: Path, out: Path, calib: np.ndarray) -> tuple[Path, dict]:
    import nncf
    import onnx

    ds = nncf.Dataset([calib[i:i + 1] for i in range(len(calib))], lambda a: {"input": a})
    onnx.save(nncf.quantize(onnx.load(str(fp32)), ds, subset_size=len(calib)), str(out))
    return out, {}


def modelopt_quantize(fp32: Path, out: Path, calib: np.ndarray) -> tuple[Path, dict]:
    """In the interpreter OTC_MODELOPT_PYTHON names (bench/modelopt_ptq.py says why)."""
    py = os.environ.get("OTC_MODELOPT_PYTHON")
    if not py:
        raise RuntimeError("OTC_MODELOPT_PYTHON is not set (a Python with nvidia-modelopt[onnx], which pins onnx and "
                           "onnxruntime releases of its own)")
    npy = out.with_suffix(".calib.npy")
    np.save(npy, calib)
    res = subprocess.run([py, str(Path(__file__).with_name("modelopt_ptq.py")), str(fp32), str(out), str(npy)],
                         capture_output=True, text=True)
    if res.returncode != 0 or not out.exists():
        raise RuntimeError((res.stderr.strip().splitlines() or ["no output"])[-1])
    return out, {}


METHODS = {"otcompress (fixed defaults)": lambda f, o, c: ours(f, o, c, "fixed"),
           "otcompress (target = auto)": lambda f, o, c: ours(f, o, c, "auto"),
           "onnxruntime quantize_static defaults": ort_defaults, "NNCF nncf.quantize": nncf_quantize,
           "Model Optimizer ONNX PTQ": modelopt_quantize}


def test_sets(name: str, every: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every model on the 10,000 JPEG test images (every k-th), the ResNets also on the 932 lossless ones their
    checkpoints are meant for (shared/data/README.md): 932 images resolve 0.1 points, too few to rank
    quantizers that differ by a few images."""
    from otcompress.data import load_dataset

    norm = MODELS[name][4]
    ds = load_dataset(need("cifar10/test.npz"))
    x, y = ds.batch(slice(None), *norm).numpy()[::every], ds.y.numpy()[::every]
    sets = {"test": (x, y)}
    if name.startswith("resnet"):
        xl, yl = eval_data(name)
        sets["lossless"] = (xl.numpy(), yl.numpy())
    return sets


def paired(a: np.ndarray, b: np.ndarray) -> dict:
    """Top-1 difference a - b (points) on the same images, with its 95% interval (normal approximation of
    the paired difference: only the images where one is right and the other wrong count)."""
    d = a.astype(np.float64) - b.astype(np.float64)
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else 0.0
    return {"diff": 100 * float(d.mean()), "ci95": 100 * float(half), "a_only": int((d > 0).sum()), "b_only": int((d < 0).sum())}


OURS = ("otcompress (fixed defaults)", "otcompress (target = auto)")
ANCHORS = ("onnxruntime quantize_static defaults", "NNCF nncf.quantize", "Model Optimizer ONNX PTQ")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="resnet56,vgg11_bn_half,mobilenetv2,vit_tiny_p2")
    ap.add_argument("--every", type=int, default=1, help="evaluate on every k-th of the 10,000 test images")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--methods", default=",".join(METHODS), help="which quantizers (names as in the table)")
    ap.add_argument("--work", help="keep every file and score here, and reuse them (resume a run cut short)")
    args = ap.parse_args()
    methods = {m: METHODS[m] for m in args.methods.split(",")}
    from otcompress.exporters.onnx import export_onnx

    rows, right = [], {}  # right: row index -> per-image correctness on the test set, for the paired comparisons
    with contextlib.ExitStack() as stack:
        td = Path(args.work) if args.work else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        td.mkdir(parents=True, exist_ok=True)
        files = []
        for name in args.models.split(","):
            sets = test_sets(name, args.every)
            calib = calibration(name)
            variants = VARIANTS["vit" if name.startswith("vit") else "cnn"]
            models = None
            for v, variant in enumerate(variants):
                fp32 = td / f"{name}-{v}.onnx"
                if not fp32.exists():
                    models = models or fp32_models(name, calib)
                    export_onnx(models[variant], torch.zeros(1, 3, 32, 32), fp32, dynamic_batch=True)
                base, ref = {"model": name, "variant": variant}, {}

                def scored(path):
                    ref.update(ref or {k: run(fp32, x) for k, (x, _) in sets.items()})
                    got = {k: run(path, x) for k, (x, _) in sets.items()}
                    out = {"images": len(sets["test"][1]),
                           "agreement": float((got["test"].argmax(1) == ref["test"].argmax(1)).mean()),
                           "output_error": float(np.mean((got["test"] - ref["test"]) ** 2) / np.var(ref["test"]))}
                    for k, (_, y) in sets.items():
                        out["top1" if k == "test" else f"top1_{k}"] = float((got[k].argmax(1) == y).mean())
                    return out, got["test"].argmax(1) == sets["test"][1]

                for method in ["FP32", *methods]:
                    slug = re.sub(r"\W+", "_", method).strip("_")
                    key = td / f"{name}-{v}-{slug}.{args.every}"
                    out = fp32 if method == "FP32" else td / f"{name}-{v}-{slug}.int8.onnx"
                    if key.with_suffix(key.suffix + ".json").exists():  # scored by an earlier run with --work
                        row = json.loads(key.with_suffix(key.suffix + ".json").read_text())
                        ok = np.load(key.with_suffix(key.suffix + ".npy"))
                    elif method == "FP32":
                        sc, ok = scored(fp32)
                        row = {**base, "method": method, **sc, "mb": fp32.stat().st_size / 1e6, "seconds": 0.0}
                    else:
                        t0 = time.perf_counter()
                        try:
                            path, extra = methods[method](fp32, out, calib)
                        except Exception as e:  # a tool that does not run here: said so in the table
                            rows.append({**base, "method": method, "error": f"{type(e).__name__}: {str(e)[:120]}"})
                            print(rows[-1], flush=True)
                            continue
                        secs = time.perf_counter() - t0
                        sc, ok = scored(path)
                        row = {**base, "method": method, **sc, "mb": path.stat().st_size / 1e6, "seconds": secs, **extra}
                    if args.work:
                        key.with_suffix(key.suffix + ".json").write_text(json.dumps(row))
                        np.save(key.with_suffix(key.suffix + ".npy"), ok)
                    right[len(rows)] = ok
                    rows.append(row)
                    files.append((len(rows) - 1, out))
                    print(rows[-1], flush=True)
        for (i, _), lat in zip(files, interleaved_latency([p for _, p in files], [1, 3, 32, 32], args.rounds)):
            rows[i].update(lat)
    for i, r in enumerate(rows):
        fp = next(f for f in rows if f["model"] == r["model"] and f["variant"] == r["variant"] and f["method"] == "FP32")
        if "latency_b1_ms" in r:
            r["speedup_b1"], r["speedup_b32"] = fp["latency_b1_ms"] / r["latency_b1_ms"], fp["latency_b32_ms"] / r["latency_b32_ms"]
        if r["method"] in OURS and i in right:
            r["vs"] = {a["method"]: paired(right[i], right[j]) for j, a in enumerate(rows)
                       if a["model"] == r["model"] and a["variant"] == r["variant"] and a["method"] in ANCHORS + ("FP32",)
                       and j in right}
    res = {"rows": rows, "calibration_images": CALIB, "threads": 2, "every": args.every}
    publish("int8.json", res, plot, markdown, "int8")


def markdown(res: dict) -> str:
    lines = ["| model | variant | method | top-1 % | top-1 % (932 lossless) | agreement | output error | MB | ms b1 | ms b32 "
             "| speed b1 / b32 | calib s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['variant']} | {r['method']} | — | — | — | — | — | — | — | not run: {r['error']} | — |")
            continue
        sp = f"{r['speedup_b1']:.2f}× / {r['speedup_b32']:.2f}×" if "speedup_b1" in r else "—"
        lossless = f"{100 * r['top1_lossless']:.1f}" if "top1_lossless" in r else "—"
        lines.append(f"| {r['model']} | {r['variant']} | {r['method']}{' (' + r['settings'] + ')' if r.get('settings') else ''} "
                     f"| {100 * r['top1']:.2f} | {lossless} | {r['agreement']:.4f} | {r['output_error']:.1e} | {r['mb']:.2f} "
                     f"| {r.get('latency_b1_ms', 0):.2f} | {r.get('latency_b32_ms', 0):.1f} | {sp} | {r['seconds']:.1f} |")
    lines += ["", "Top-1 differences on the same test images, ours minus each other row, with their 95% intervals (paired):", "",
              "| model | variant | ours | vs FP32 | vs onnxruntime defaults | vs NNCF | vs Model Optimizer |", "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        if "vs" not in r:
            continue
        cells = [(f"{v['diff']:+.2f} ± {v['ci95']:.2f}" if (v := r["vs"].get(m)) else "—") for m in ("FP32",) + ANCHORS]
        lines.append(f"| {r['model']} | {r['variant']} | {r['method'].split('(')[1].rstrip(')')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    with figure(path, "onnxruntime CPU latency, batch 32 (ms)", "top-1 (%)", (7, 4.5)) as ax:
        for method in dict.fromkeys(r["method"] for r in res["rows"]):
            rs = [r for r in res["rows"] if r["method"] == method and "latency_b32_ms" in r]
            ax.scatter([r["latency_b32_ms"] for r in rs], [100 * r["top1"] for r in rs], label=method, s=18)
        ax.set_xscale("log")

if __name__ == "__main__":
    main()
