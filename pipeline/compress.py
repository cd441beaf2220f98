"""recipe -> stages -> artifacts -> validation: what `otcompress run` does. The output is built in a hidden
sibling folder and swapped in only when the run finished and its files were reloaded and checked, so an
earlier result is never lost and "exit 0, then the model does not load" cannot happen. A lock on the
output folder refuses a second run into it while one is writing."""

from __future__ import annotations

import copy
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .artifacts import atomic_write_json, atomic_write_text, commit_dir, output_lock, sha256_file, staging_dir, staging_path
from .context import Context
from .errors import OTCError
from .metrics import count_flops, count_params, fidelity, predict
from .models import SEED, load as load_model, model_facts
from .models.adapt import _LogitsOnly
from .recipe import Recipe
from .report import render_markdown, stage_table
from .serialize import load_compressed, save_compressed
from .stages import STAGES
from .stages.base import FACTS
from .validation import Gate, probe_inputs
from .where import set_log_dir, stage_scope


def versions() -> dict:
    import onnx
    import onnxruntime

    return {"otcompress": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


def measure(ctx: Context, kind: str, config: dict, seconds: float, details: dict | None = None) -> dict:
    fid = fidelity(ctx.ref_logits, predict(ctx.model, torch.from_numpy(ctx.probe.x)), ctx.probe.y)
    rec = {"kind": kind, "params": count_params(ctx.model), "flops": count_flops(ctx.model, ctx.input_shape),
           **{k: fid[k] for k in ("top1_agreement", "max_abs_error", "mean_abs_error", "rel_error", "mean_logit_l2")},
           "seconds": round(seconds, 3), "config": config}
    if "accuracy" in fid:
        rec["accuracy"] = fid["accuracy"]
    if details:
        rec["details"] = details
    return rec


def check_model_needs(recipe: Recipe, model: torch.nn.Module) -> None:
    """Facts about the built model the stages need (a ViT for `tokens`), before any stage runs."""
    from .tokens.adapters import adapter_for

    for i, need in recipe.model_needs:
        kind = recipe.stages[i]["kind"]
        if need == "model.vit":
            try:
                adapter_for(model)
            except OTCError as e:
                raise OTCError(f"{recipe.path}: stages[{i}] ({kind}): {e}") from None
        else:
            raise OTCError(f"{recipe.path}: stages[{i}] ({kind}) needs {FACTS.get(need, need)}")


def build_meta(recipe: Recipe, ctx: Context) -> dict:
    d = recipe.data or {}
    m = recipe.model
    return {"arch": m["arch"], "args": m["args"], "facts": model_facts(m["arch"], m["args"], ctx.original),
            "logits_adapter": isinstance(ctx.original, _LogitsOnly), "input_shape": m["input_shape"],
            "mean": d.get("mean"), "std": d.get("std"), "eval": d.get("eval"), "name": recipe.name,
            "original": {"checkpoint": m["checkpoint"], "sha256": sha256_file(m["checkpoint"]) if m["checkpoint"] else None,
                         "seed": SEED},
            "tokens": ctx.tokens, "gate": ctx.gate,
            "exports": {name: {"precision": e.precision} for name, e in ctx.exports.items()},
            "tensorrt_precision": ctx.exports["model.plan"].precision if "model.plan" in ctx.exports else None}


def self_check(ctx: Context, path: Path, samples: int = 8) -> dict:
    """Reload compressed.safetensors and every exported file and compare them with the in-memory model on a
    few probe inputs (exports through the gate's export check, decisions replayed). Any failure is ours."""
    from otcompress.exporters import BACKENDS
    from otcompress.exporters.pytorch import TorchRunner

    from .validation.gate import export_checks

    x = ctx.probe.x[:samples]
    try:
        model, _ = load_compressed(path)
    except OTCError as e:
        raise RuntimeError(f"self-check: {path.name} does not reload: {e}") from None
    with torch.no_grad():
        want = ctx.model(torch.from_numpy(x)).numpy()
        got = model(torch.from_numpy(x)).numpy()
    err = float(np.abs(want - got).max())
    if not np.allclose(want, got, atol=1e-5, rtol=1e-5):
        raise RuntimeError(f"self-check: the model rebuilt from {path.name} differs from the compressed model "
                           f"(max |Δlogit| {err:.3g})")
    result = {"reload_max_abs": err, "exports": {}}
    ref = TorchRunner(model, "pytorch:reloaded", input_shape=ctx.input_shape)
    ref_outs = ref.infer_batched(x, decisions=True)
    for name, b in BACKENDS.items():
        e = ctx.exports.get(b.artifact)
        if e is None:
            continue
        with b.open(e.path) as runner:
            checks = export_checks(ref, runner, x, ref_outs, Gate(atol=1e-4, rtol=1e-3, min_decision_agreement=0.0))
        bad = [c for c in checks if not c["passed"]]
        if bad:
            raise RuntimeError(f"self-check: {e.path.name} does not reproduce the compressed model: {bad[0].get('reason')}")
        result["exports"][name] = checks[0].get("max_abs")
    return result


def run_recipe(recipe: Recipe, out: str | Path | None = None, *, force=False, resume=False, progress=True) -> dict:
    out = Path(out) if out else Path("artifacts") / recipe.name
    rank = int(os.environ.get("RANK", "0"))  # under torchrun only rank 0 writes artifacts
    with output_lock(out, enabled=rank == 0):
        return _run(recipe, out, force, resume, progress, rank)


def _run(recipe, out, force, resume, progress, rank) -> dict:
    ckpt_dir = staging_path(out)
    stage_dir = staging_dir(out, force, resume) if rank == 0 else Path(tempfile.mkdtemp(prefix=f"otcompress-rank{rank}-"))
    set_log_dir(stage_dir)
    with stage_scope("loading the model", str(recipe.path)):
        model = load_model(recipe.model)
    check_model_needs(recipe, model)
    original = copy.deepcopy(model).eval()
    for p in original.parameters():
        p.requires_grad_(False)
    d = recipe.data or {}
    probe = probe_inputs(d.get("eval"), d.get("mean"), d.get("std"), d.get("limit"), 0, recipe.model["input_shape"])
    with stage_scope("measuring the original model", str(recipe.path)):
        ctx = Context(recipe=recipe, model=model, original=original, out=stage_dir, probe=probe,
                      ref_logits=predict(original, torch.from_numpy(probe.x)), progress=progress and rank == 0,
                      resume=resume, ckpt_dir=ckpt_dir)
        records = [measure(ctx, "original", {}, 0.0)]
    for i, st in enumerate(recipe.stages):
        stage = STAGES[st["kind"]]
        params = {k: v for k, v in st.items() if k != "kind"}
        ctx.stage_index = i
        if progress:
            print(f"[{i + 1}/{len(recipe.stages)}] {st['kind']} …", flush=True)
        t0 = time.perf_counter()
        with stage_scope(f"stages[{i}] ({st['kind']})", str(recipe.path)):
            details = stage.apply(ctx, params)
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

    with stage_scope("saving and reloading the result"):
        save_compressed(stage_dir / "compressed.safetensors", ctx.model, build_meta(recipe, ctx))
        check = self_check(ctx, stage_dir / "compressed.safetensors")
    files = ["compressed.safetensors"] + [e.path.name for e in ctx.exports.values()]
    validation = ctx.validation if ctx.validation is not None else {
        "passed": None, "checks": [], "note": "not validated: the recipe has no validate stage"}
    report = {
        "name": recipe.name, "recipe": str(recipe.path), "recipe_sha256": recipe.sha256, "versions": versions(),
        "probe": probe.source, "stages": records, "validation": validation, "self_check": check,
        "files": {f: sha256_file(stage_dir / f) for f in sorted(files)},
    }
    atomic_write_json(stage_dir / "report.json", report)
    atomic_write_text(stage_dir / "report.md", render_markdown(report))
    shutil.rmtree(stage_dir / "checkpoints", ignore_errors=True)
    commit_dir(stage_dir, out)
    report["out"] = str(out)
    if progress:
        print(stage_table(report))
        print(f"artifacts: {out}/ ({', '.join(sorted(report['files']))}, report.json, report.md)")
    return report
