"""`otcompress sweep`: the recipe at several FLOPs targets (or sparsities) of its channel stage, each a full
run into its own folder; a table (accuracy or agreement, FLOPs, params, onnxruntime latency), a plot, and
the smallest model within the accuracy budget."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifacts import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..errors import OTCError
from .plots import png, pyplot


@dataclass
class Point:
    label: str
    key: str  # "flops" or "sparsity"
    value: float

    def edit(self, index: int) -> "SetTarget":
        return SetTarget(index, self.key, self.value)


@dataclass
class SetTarget:
    """Sets a channel stage's target (flops or sparsity, the other removed); its repr goes into the run's
    recipe hash."""

    index: int
    key: str
    value: float

    def __call__(self, raw: dict) -> None:
        st = raw["stages"][self.index]
        st.pop("flops", None)
        st.pop("sparsity", None)
        st[self.key] = self.value


def _channel_stage(recipe_path: Path, overrides: list[str]) -> int:
    """The first stage that shrinks channels (provides `shrunk`): the one a sweep varies."""
    from ..plan import load_plan
    from ..stages import STAGES

    i = load_plan(recipe_path, overrides).stage_index("shrunk")
    if i is None:
        kinds = [k for k, st in STAGES.items() if "shrunk" in st.provides({k2: f.default for k2, f in st.fields.items()})]
        raise OTCError(f"{recipe_path}: sweep needs a channel stage ({', '.join(kinds)}) to vary")
    return i


def _int8(report: dict, folder: Path, runs: int) -> dict | None:
    """The point's INT8 model, where the recipe quantizes: its latency (ms, batch 1) and its agreement with the
    point's FP32 model (the validate stage's check, in the task's measure)."""
    from otcompress.exporters.onnxruntime import OrtRunner

    from .bench import time_fn

    path = folder / "model.int8.onnx"
    if not path.exists():
        return None
    runner = OrtRunner(path).activate()
    shape = [1 if not isinstance(d, int) else d for d in runner.input_shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    agree = next((c["observed"] for c in (report.get("validation") or {}).get("checks", [])
                  if c["check"].startswith("int8:") and "drop" not in c["check"]), None)
    return {"latency_ms": time_fn(lambda: runner.infer(x), runs, 3)["median_ms"] / shape[0], "agreement": agree,
            "bytes": path.stat().st_size}


def _latency(report: dict, folder: Path, runs: int) -> float:
    """Median onnxruntime CPU latency (ms, batch 1) of the point's model.onnx (exported for it if the recipe
    has no export stage)."""
    import torch

    from otcompress.exporters.onnx import export_onnx
    from otcompress.exporters.onnxruntime import OrtRunner

    from ..serialize import load_compressed
    from .bench import time_fn

    onnx = folder / "model.onnx"
    with tempfile.TemporaryDirectory() as td:
        model, meta = load_compressed(folder / "compressed.safetensors")
        shape = meta["input_shape"]
        if not onnx.exists() or not isinstance(OrtRunner(onnx).input_shape[0], int):
            onnx = Path(td) / "m.onnx"
            export_onnx(model, torch.zeros((1, *shape[1:])), onnx)
        runner = OrtRunner(onnx).activate()
        x = np.random.default_rng(0).standard_normal((1, *shape[1:])).astype(np.float32)
        return time_fn(lambda: runner.infer(x), runs, 3)["median_ms"]


def sweep(recipe_path: Path, points: list[Point], out: Path, *, force: bool, max_drop: float | None, runs: int,
          progress: bool, overrides: list[str] = ()) -> dict:
    from ..run import run_plan
    from ..plan import load_plan

    index = _channel_stage(recipe_path, list(overrides))
    if out.exists() and not force:
        raise OTCError(f"{out}: output folder exists; pass --force to replace its points")
    rows = []
    for p in points:
        plan = load_plan(recipe_path, list(overrides), edit=p.edit(index))
        if progress:
            print(f"== {p.key} = {p.value}", flush=True)
        rep = run_plan(plan, out / p.label, force=True, progress=False)
        last = [s for s in rep["stages"] if s["kind"] not in ("export_onnx", "quantize", "export_tensorrt", "validate")][-1]
        first = rep["stages"][0]
        (agree, agree_name), _, (score, score_name) = rep["columns"]  # the task's: top-1 agreement / accuracy, ...
        rows.append({"point": p.label, p.key: p.value, "flops": last["flops"] / first["flops"],
                     "params": last["params"] / first["params"], "accuracy": last.get(score),
                     "accuracy_original": first.get(score), "top1_agreement": last.get(agree),
                     "metrics": [agree_name, score_name],
                     "latency_ms": _latency(rep, out / p.label, runs), "int8": _int8(rep, out / p.label, runs),
                     "validation": rep["validation"].get("passed"),
                     "folder": str(out / p.label)})
        if progress:
            print(_line(rows[-1]), flush=True)
    scored = [r for r in rows if (r["accuracy"] is not None)]
    if max_drop is not None and scored:
        ok = [r for r in scored if r["accuracy_original"] - r["accuracy"] <= max_drop]
    else:
        ok = [r for r in rows if r["validation"] is not False]
    best = min(ok, key=lambda r: r["flops"]) if ok else None
    result = {"recipe": str(recipe_path), "varied": f"stages[{index}].{points[0].key}", "points": rows,
              "max_accuracy_drop": max_drop, "smallest_within_budget": best["point"] if best else None}
    atomic_write_json(out / "sweep.json", result)
    atomic_write_text(out / "sweep.md", table(result) + "\n")
    atomic_write_bytes(out / "sweep.png", plot(result))
    return result


def _line(r: dict) -> str:
    acc = f"{100 * r['accuracy']:.1f}%" if r["accuracy"] is not None else f"agree {100 * r['top1_agreement']:.1f}%"
    q = r.get("int8")
    int8 = f"  INT8 {q['latency_ms']:.2f} ms" if q else ""
    return f"{r['point']:<14} FLOPs {r['flops']:.3f}  params {r['params']:.3f}  {acc}  {r['latency_ms']:.2f} ms{int8}"


def table(result: dict) -> str:
    agree, score = result["points"][0]["metrics"] if result["points"] else ("agreement", "score")
    int8 = any(r.get("int8") for r in result["points"])
    lines = [f"| point | FLOPs kept | params kept | {score} | {agree} with original | ORT latency (ms, batch 1) |"
             + (" INT8 latency (ms, batch 1) | INT8 agreement with FP32 |" if int8 else ""),
             "|---|---|---|---|---|---|" + ("---|---|" if int8 else "")]
    for r in result["points"]:
        acc = f"{100 * r['accuracy']:.1f}%" if r["accuracy"] is not None else "—"
        mark = " ◀ smallest within budget" if r["point"] == result["smallest_within_budget"] else ""
        q = r.get("int8")
        tail = ""
        if int8:
            tail = (f" {q['latency_ms']:.2f} | " + (f"{100 * q['agreement']:.1f}% |" if q["agreement"] is not None else "— |")
                    if q else " — | — |")
        lines.append(f"| {r['point']}{mark} | {r['flops']:.3f} | {r['params']:.3f} | {acc} | "
                     f"{100 * r['top1_agreement']:.1f}% | {r['latency_ms']:.2f} |" + tail)
    return "\n".join(lines)


def plot(result: dict) -> bytes:
    plt = pyplot("otcompress sweep")

    pts = sorted(result["points"], key=lambda r: r["flops"])
    y = [100 * (r["accuracy"] if r["accuracy"] is not None else r["top1_agreement"]) for r in pts]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot([r["flops"] for r in pts], y, marker="o")
    for r, v in zip(pts, y):
        ax.annotate(f"{r['latency_ms']:.1f} ms", (r["flops"], v), fontsize=7, textcoords="offset points", xytext=(3, 3))
    if pts and pts[0].get("accuracy_original") is not None:
        ax.axhline(100 * pts[0]["accuracy_original"], color="gray", ls=":", label="original")
        if result["max_accuracy_drop"] is not None:
            ax.axhline(100 * (pts[0]["accuracy_original"] - result["max_accuracy_drop"]), color="red", ls="--",
                       label="accuracy budget")
        ax.legend(fontsize=8)
    ax.set_xlabel("FLOPs kept")
    agree, score = pts[0]["metrics"] if pts else ("agreement", "score")
    ax.set_ylabel(f"{score} (%)" if pts and pts[0]["accuracy"] is not None else f"{agree} (%)")
    ax.set_title(Path(result["recipe"]).name + ": " + result["varied"])
    fig.tight_layout()
    data = png(fig)
    plt.close(fig)
    return data


def parse_points(flops: str | None, sparsities: str | None) -> list[Point]:
    if (flops is None) == (sparsities is None):
        raise OTCError("give exactly one of --flops or --sparsities (comma-separated fractions)")
    key, text = ("flops", flops) if flops is not None else ("sparsity", sparsities)
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise OTCError(f"--{key if key == 'flops' else 'sparsities'} {text!r}: expected comma-separated fractions") from None
    bad = [v for v in vals if not (0 < v <= 1 if key == "flops" else 0 <= v < 1)]
    if bad or not vals:
        raise OTCError(f"--{'flops' if key == 'flops' else 'sparsities'}: {bad or text!r} out of range "
                       f"({'(0, 1]' if key == 'flops' else '[0, 1)'})")
    return [Point(f"{key}-{v:g}", key, v) for v in vals]

