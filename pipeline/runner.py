"""recipe -> stages -> artifacts -> validation. Builds the output in a hidden sibling folder and swaps it
in only when the run finished, so an earlier result is never lost."""

from __future__ import annotations

import copy
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from . import __version__
from .artifacts import atomic_write_json, atomic_write_text, commit_dir, sha256_file, staging_dir, staging_path
from .checkpoint import load_weights, read_state_dict
from .context import Context
from .errors import OTCError
from .metrics import count_flops, count_params, fidelity, predict
from .recipe import Recipe
from .report import render_markdown, stage_table
from .serialize import save_compressed
from .stages import STAGES
from .zoo import build_model


def versions() -> dict:
    import onnx
    import onnxruntime

    return {"otcompress": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


def load_model(recipe: Recipe) -> torch.nn.Module:
    torch.manual_seed(0)  # a model without checkpoint is still the same model on every run and every rank
    model = build_model(recipe.model["arch"], recipe.model["args"])
    if recipe.model["checkpoint"]:
        load_weights(model, read_state_dict(recipe.model["checkpoint"]), recipe.model["checkpoint"])
    return model.eval()


def probe_inputs(recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    d = recipe.data
    if d and d.get("eval"):
        from .data import load_dataset

        ds = load_dataset(d["eval"], d.get("limit"))
        return ds.batch(slice(None), d.get("mean"), d.get("std")), ds.y, f"eval data ({len(ds)} samples)"
    g = torch.Generator().manual_seed(0)
    return torch.randn((64, *recipe.model["input_shape"][1:]), generator=g), None, "seeded standard normal (64 samples, seed 0)"


def measure(ctx: Context, kind: str, config: dict, seconds: float, details: dict | None = None) -> dict:
    out = predict(ctx.model, ctx.probe_x)
    fid = fidelity(ctx.ref_logits, out, ctx.probe_y)
    rec = {"kind": kind, "params": count_params(ctx.model), "flops": count_flops(ctx.model, ctx.input_shape),
           "top1_agreement": fid["top1_agreement"], "max_abs_error": fid["max_abs_error"],
           "mean_abs_error": fid["mean_abs_error"], "rel_error": fid["rel_error"], "mean_logit_l2": fid["mean_logit_l2"],
           "seconds": round(seconds, 3), "config": config}
    if "accuracy" in fid:
        rec["accuracy"] = fid["accuracy"]
    if details:
        rec["details"] = details
    return rec


def run_recipe(recipe: Recipe, out: str | Path | None = None, *, force=False, resume=False, progress=True) -> dict:
    out = Path(out) if out else Path("artifacts") / recipe.name
    rank = int(os.environ.get("RANK", "0"))  # under torchrun only rank 0 writes artifacts
    ckpt_dir = staging_path(out)
    if rank == 0:
        stage_dir = staging_dir(out, force, resume)
    else:
        stage_dir = Path(tempfile.mkdtemp(prefix=f"otcompress-rank{rank}-"))
    model = load_model(recipe)
    original = copy.deepcopy(model).eval()
    for p in original.parameters():
        p.requires_grad_(False)
    x, y, source = probe_inputs(recipe)
    d = recipe.data or {}
    meta = {"arch": recipe.model["arch"], "args": recipe.model["args"], "input_shape": recipe.model["input_shape"],
            "mean": d.get("mean"), "std": d.get("std"), "eval": d.get("eval"), "name": recipe.name,
            "original": {"checkpoint": recipe.model["checkpoint"],
                         "sha256": sha256_file(recipe.model["checkpoint"]) if recipe.model["checkpoint"] else None}}
    ctx = Context(recipe=recipe, model=model, original=original, out=stage_dir, meta=meta, probe_x=x, probe_y=y,
                  ref_logits=predict(original, x), progress=progress and rank == 0, resume=resume, ckpt_dir=ckpt_dir)
    records = [measure(ctx, "original", {}, 0.0)]
    for i, st in enumerate(recipe.stages):
        stage = STAGES[st["kind"]]
        params = {k: v for k, v in st.items() if k != "kind"}
        if progress:
            print(f"[{i + 1}/{len(recipe.stages)}] {st['kind']} …", flush=True)
        t0 = time.perf_counter()
        try:
            details = stage.apply(ctx, params)
        except OTCError as e:
            raise OTCError(f"{recipe.path}: stages[{i}] ({st['kind']}): {e}") from None
        if rank != 0 and stage.trains:
            shutil.rmtree(stage_dir, ignore_errors=True)
            return {"rank": rank, "validation": {"passed": True}, "out": str(out)}  # the other ranks only train
        secs = time.perf_counter() - t0
        if stage.changes_model:
            records.append(measure(ctx, st["kind"], params, secs, details))
        else:  # exports and validation leave the model as it was: no need to run the probe again
            rec = {k: v for k, v in records[-1].items() if k != "details"}
            rec.update(kind=st["kind"], config=params, seconds=round(secs, 3))
            if details:
                rec["details"] = details
            records.append(rec)

    save_compressed(stage_dir / "compressed.safetensors", ctx.model, ctx.meta)
    ctx.files["compressed"] = "compressed.safetensors"
    report = {
        "name": recipe.name, "recipe": str(recipe.path), "recipe_sha256": recipe.sha256, "versions": versions(),
        "probe": source, "stages": records,
        "validation": ctx.validation if ctx.validation is not None else {"passed": True, "checks": [], "note": "no validate stage"},
        "files": {},
    }
    for f in sorted(ctx.files.values()):
        report["files"][f] = sha256_file(stage_dir / f)
    atomic_write_json(stage_dir / "report.json", report)
    atomic_write_text(stage_dir / "report.md", render_markdown(report))
    shutil.rmtree(stage_dir / "checkpoints", ignore_errors=True)
    commit_dir(stage_dir, out)
    report["out"] = str(out)
    if progress:
        print(stage_table(report))
        print(f"artifacts: {out}/ ({', '.join(sorted(report['files']))}, report.json, report.md)")
    return report
