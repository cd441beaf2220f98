"""`otcompress bench`: latency (median, p90) and throughput of original vs compressed on every backend
that is available here (PyTorch CPU/CUDA, onnxruntime providers, TensorRT), with warm-up."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ..artifacts import atomic_write_json
from ..errors import OTCError


def time_fn(fn, runs: int, warmup: int) -> dict:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return {"median_ms": 1e3 * statistics.median(ts), "p90_ms": 1e3 * ts[min(len(ts) - 1, int(0.9 * len(ts)))]}


def _torch_fn(model, x, device):
    model = model.to(device).eval()
    xd = torch.from_numpy(x).to(device)

    @torch.no_grad()
    def fn():
        model(xd)
        if device == "cuda":
            torch.cuda.synchronize()

    return fn


def bench_artifacts(artifact_dir: Path, batches: list[int], runs: int, warmup: int) -> dict:
    from otcompress.exporters.onnx import export_onnx
    from otcompress.exporters.onnxruntime import OrtRunner, ort_providers

    from ..models import build_model, original_model
    from ..serialize import load_compressed

    comp_path = artifact_dir / "compressed.safetensors"
    if not comp_path.exists():
        raise OTCError(f"{artifact_dir}: no compressed.safetensors; expected the output folder of 'otcompress run'")
    compressed, meta = load_compressed(comp_path)
    original = original_model(meta)
    if original is None:  # timing needs the architecture, not the trained weights
        original = build_model(meta["arch"], meta.get("args"), meta.get("facts"), meta.get("input_shape"))
    shape = meta["input_shape"]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    with tempfile.TemporaryDirectory() as td:
        onnx_files = {}
        for name, model in (("original", original), ("compressed", compressed)):
            for b in batches:
                p = Path(td) / f"{name}-{b}.onnx"
                export_onnx(model, torch.zeros((b, *shape[1:])), p)
                onnx_files[(name, b)] = p
        for b in batches:
            x = np.random.default_rng(0).standard_normal((b, *shape[1:])).astype(np.float32)
            for name, model in (("original", original), ("compressed", compressed)):
                for dev in devices:
                    r = time_fn(_torch_fn(model, x, dev), runs, warmup)
                    rows.append({"model": name, "backend": f"pytorch-{dev}", "batch": b, **r})
                for prov in ort_providers():
                    runner = OrtRunner(onnx_files[(name, b)], providers=list(dict.fromkeys([prov, "CPUExecutionProvider"])))
                    used = runner.providers[0]
                    runner.activate()
                    r = time_fn(lambda: runner.infer(x), runs, warmup)
                    rows.append({"model": name, "backend": f"onnxruntime-{used.replace('ExecutionProvider', '')}", "batch": b, **r})
        rows += _int8_rows(artifact_dir / "model.int8.onnx", shape, batches, runs, warmup)
    seen = {}
    for r in rows:
        r["throughput_per_s"] = r["batch"] / (r["median_ms"] / 1e3)
        seen[(r["model"], r["backend"], r["batch"])] = r
    for r in rows:
        o = seen.get(("original", r["backend"], r["batch"]))
        if r["model"] != "original" and o:
            r["speedup"] = o["median_ms"] / r["median_ms"]
    from ..metrics import count_flops

    sizes = {f: (artifact_dir / f).stat().st_size for f in ("model.onnx", "model.int8.onnx", "model.plan", "model.int8.plan")
             if (artifact_dir / f).exists()}
    res = {"flops_original": count_flops(original, shape), "flops_compressed": count_flops(compressed, shape),
           "runs": runs, "warmup": warmup, "rows": rows, "threads": torch.get_num_threads(), "file_bytes": sizes}
    res["flop_reduction"] = res["flops_original"] / res["flops_compressed"]
    atomic_write_json(artifact_dir / "bench.json", res)
    plot_bench(res, artifact_dir / "bench.png")
    for r in rows:
        sp = f"  speedup {r['speedup']:.2f}x" if "speedup" in r else ""
        print(f"{r['model']:<11} {r['backend']:<22} batch {r['batch']:>3}  median {r['median_ms']:8.2f} ms  "
              f"p90 {r['p90_ms']:8.2f} ms  {r['throughput_per_s']:9.1f}/s{sp}")
    for f, n in sizes.items():
        print(f"{f:<16} {n / 1e6:8.2f} MB")
    print(f"FLOP reduction {res['flop_reduction']:.2f}x; wrote {artifact_dir / 'bench.json'} and bench.png")
    return res


def _int8_rows(path: Path, shape, batches: list[int], runs: int, warmup: int) -> list[dict]:
    """The quantize stage's model.int8.onnx on onnxruntime's CPU kernels (its integer kernels are the CPU
    provider's), at each batch its input takes (a static batch: that one only)."""
    from otcompress.exporters.onnxruntime import OrtRunner

    if not path.exists():
        return []
    runner = OrtRunner(path, providers=["CPUExecutionProvider"]).activate()
    fixed = runner.input_shape[0] if isinstance(runner.input_shape[0], int) else None
    rows = []
    for b in batches:
        if fixed is not None and b != fixed:
            continue
        x = np.random.default_rng(0).standard_normal((b, *shape[1:])).astype(np.float32)
        rows.append({"model": "compressed-int8", "backend": "onnxruntime-CPU", "batch": b,
                     **time_fn(lambda: runner.infer(x), runs, warmup)})
    runner.deactivate()
    return rows


def plot_bench(res: dict, path: Path) -> None:
    from ..artifacts import atomic_write_bytes
    from .plots import png, pyplot

    plt = pyplot("otcompress bench")

    keys = sorted({(r["backend"], r["batch"]) for r in res["rows"]})
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(keys)), 4))
    names = [n for n in ("original", "compressed", "compressed-int8") if any(r["model"] == n for r in res["rows"])]
    w = 0.8 / len(names)
    for i, name in enumerate(names):
        vals = [next((r["median_ms"] for r in res["rows"] if r["model"] == name and (r["backend"], r["batch"]) == k), 0)
                for k in keys]
        ax.bar([j + (i - (len(names) - 1) / 2) * w for j in range(len(keys))], vals, w, label=name)
    ax.set_xticks(range(len(keys)), [f"{b}\nbatch {n}" for b, n in keys], fontsize=8)
    ax.set_ylabel("median latency (ms)")
    ax.set_yscale("log")
    ax.set_title(f"latency, FLOP reduction {res['flop_reduction']:.2f}x")
    ax.legend()
    fig.tight_layout()
    data = png(fig)
    plt.close(fig)
    atomic_write_bytes(path, data)
