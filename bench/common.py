"""Shared helpers for the benchmarks: models and data from ../shared/data (never copied into the repo)."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import sys
from pathlib import Path

from torch.utils._python_dispatch import TorchDispatchMode


ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("OTC_SHARED", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "bench" / "results"
CIFAR_NORM = ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])
IMAGENET_NORM = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])

MODELS = {
    "resnet20": ("cifar_resnet20", {}, "models/resnet20-12fca82f.th", "cifar10/test-lossless-932.npz", IMAGENET_NORM),
    "resnet56": ("cifar_resnet56", {}, "models/resnet56-4bfd9763.th", "cifar10/test-lossless-932.npz", IMAGENET_NORM),
    "vgg11_bn_half": ("cifar_vgg11_bn", {"width": 32}, "models/vgg11_bn_half.safetensors", "cifar10/test.npz", CIFAR_NORM),
    "mobilenetv2": ("cifar_mobilenetv2", {}, "models/mobilenetv2.safetensors", "cifar10/test.npz", CIFAR_NORM),
    "vit_tiny_p2": ("vit", dict(img_size=32, patch_size=2, embed_dim=192, depth=12, num_heads=3, num_classes=10),
                    "models/vit_tiny_p2.safetensors", "cifar10/test.npz", CIFAR_NORM),
}


def need(rel: str) -> Path:
    p = SHARED / rel
    if not p.exists():
        sys.exit(f"{p} is missing: the benchmarks read ../shared/data (set OTC_SHARED to point elsewhere)")
    return p


def load(name: str):
    from otcompress.models.checkpoint import load_weights, read_state_dict
    from otcompress.models import build_model

    arch, args, ckpt, data, norm = MODELS[name]
    model = build_model(arch, args)
    load_weights(model, read_state_dict(need(ckpt)), ckpt)
    return model.eval()


def eval_data(name: str, limit: int | None = None):
    from otcompress.data import load_dataset

    arch, args, ckpt, data, norm = MODELS[name]
    ds = load_dataset(need(data), limit)
    return ds.batch(slice(None), *norm), ds.y


def machine() -> dict:
    """The CPU a result was measured on (INT8 and channel-layout speed depend on its vector extensions)."""
    info = {"cores": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "")
    flags = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))
    return {**info, "cpu": name, "avx2": "avx2" in flags, "avx512": "avx512f" in flags,
            "vnni": bool(flags & {"avx512_vnni", "avx_vnni"})}


def save(name: str, obj) -> Path:
    """Write a result to bench/results/NAME, recording the machine it was measured on."""
    if isinstance(obj, dict):
        obj = {**obj, "machine": machine()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    p = RESULTS / name
    p.write_text(json.dumps(obj, indent=2) + "\n")
    return p


def publish(name: str, res: dict, plot, markdown, marker: str | None) -> Path:
    """Save a benchmark's JSON, its plot beside it, print its table and paste it between the README's markers
    (`marker` None: printed only)."""
    path = save(name, res)
    plot(res, path.with_suffix(".png"))
    md = markdown(res)
    if marker:
        sys.path.insert(0, str(ROOT))
        from scripts.fill_readme import fill

        fill(marker, md, required=False)
    print(md)
    return path


@contextlib.contextmanager
def figure(path: Path, xlabel: str, ylabel: str, size: tuple = (6.5, 4)):
    """An axes to draw on (headless matplotlib), labelled, given a legend and saved to `path` when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    try:
        yield ax
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def interleaved_latency(files: list[Path], shape: list[int], rounds: int = 5, runs: int = 10, threads: int = 2) -> list[dict]:
    """Median-of-rounds onnxruntime CPU latency (ms, batch 1 and 32) per file, every file once per round, so
    a shared machine's drift hits every file alike."""
    import statistics

    from otcompress.quantize.search import latencies

    lat = [[] for _ in files]
    for _ in range(rounds):
        for i, path in enumerate(files):  # one session at a time: dozens of files need not all be held open
            lat[i].append(latencies([path], shape, threads=threads, rounds=1, runs=runs)[0])
    return [{"latency_b1_ms": statistics.median(r["b1"] for r in ls), "latency_b32_ms": statistics.median(r["b32"] for r in ls)}
            for ls in lat]


def merge_share(model, x, reps: int = 1) -> dict:
    """Time spent in `reduce_tokens` and in the transformer blocks over `reps` forwards after one warm-up:
    CUDA events on a GPU, perf_counter on the CPU (which runs every call synchronously). Medians, in ms."""
    import statistics
    import time

    import torch

    from otcompress.tokens import patch as P

    cuda = x.is_cuda

    def mark():
        if not cuda:
            return time.perf_counter()
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        return e

    def total(spans):
        return sum(a.elapsed_time(b) if cuda else 1e3 * (b - a) for a, b in spans)

    spans, starts, orig = {"merge": [], "block": []}, [], P.reduce_tokens

    def timed(*a, **k):
        t0 = mark()
        out = orig(*a, **k)
        spans["merge"].append((t0, mark()))
        return out

    hooks = [h for b in model.blocks for h in (
        b.register_forward_pre_hook(lambda mod, i: starts.append(mark())),
        b.register_forward_hook(lambda mod, i, o: spans["block"].append((starts.pop(), mark()))))]
    P.reduce_tokens = timed  # the reducing blocks look it up in their module at every call
    runs = []
    try:
        for rep in range(reps + 1):
            for v in spans.values():
                v.clear()
            model(x)
            if cuda:
                torch.cuda.synchronize()
            if rep:
                runs.append((total(spans["merge"]), total(spans["block"])))
    finally:
        P.reduce_tokens = orig
        for h in hooks:
            h.remove()
    return {"merge_ms": statistics.median(m for m, _ in runs), "blocks_ms": statistics.median(b for _, b in runs),
            "merge_share": statistics.median(m / b for m, b in runs)}


class OpCount(TorchDispatchMode):
    """Operators dispatched inside the `with` block, by name; views and detach are left out (they launch no
    kernel). On a GPU each counted operator is a kernel launch, so where launches dominate it predicts time."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not any(r.alias_info is not None for r in func._schema.returns) and func.overloadpacket.__name__ != "detach":
            self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def merge_ops(model, x) -> float:
    """Operators one `reduce_tokens` call dispatches, averaged over the reducing blocks of one forward."""
    from otcompress.tokens import patch as P

    counts, orig = [], P.reduce_tokens

    def counted(*a, **k):
        with OpCount() as c:
            out = orig(*a, **k)
        counts.append(sum(c.ops.values()))
        return out

    P.reduce_tokens = counted
    try:
        model(x)
    finally:
        P.reduce_tokens = orig
    return sum(counts) / max(1, len(counts))
