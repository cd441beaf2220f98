"""plan -> stages -> artifacts -> validation: what `otcompress run` and `otcompress.compress()` do. The output is
built in a hidden sibling folder and swapped in only when the run finished and its files were reloaded and
checked, so an earlier result is never lost and "exit 0, then the model does not load" cannot happen. A lock
on the output folder refuses a second run into it while one is writing."""

from __future__ import annotations

import copy
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from .version import __version__
from .artifacts import atomic_write_json, atomic_write_text, commit_dir, output_lock, sha256_file, staging_dir, staging_path
from .context import Context
from .metrics import count_flops, count_params, predict_outputs
from .models import SEED, load as load_model, model_facts
from .plan import Plan, check_model
from .report import render_markdown, stage_table
from .serialize import save_compressed
from .stages import STAGES
from .tasks import task_of
from .training.distributed import launch_rank
from .validation import Gate, probe_inputs
from .validation.selfcheck import self_check
from .where import set_log_dir, stage_scope


def versions() -> dict:
    import onnx
    import onnxruntime

    return {"otcompress": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "python": platform.python_version()}


def measure(ctx: Context, task, kind: str, config: dict, seconds: float, details: dict | None = None) -> dict:
    """One row of the stage table: size, FLOPs and the task's fidelity metrics on the probe inputs."""
    outs = {k: v.numpy() for k, v in predict_outputs(ctx.model, torch.from_numpy(ctx.probe.x)).items()}
    fid = task.fidelity(ctx.ref_outputs, outs, ctx.probe.labels, model=ctx.model)
    rec = {"kind": kind, "params": count_params(ctx.model), "flops": count_flops(ctx.model, ctx.input_shape),
           **{k: v for k, v in fid.items() if isinstance(v, (int, float)) and k != "samples"},
           "seconds": round(seconds, 3), "config": config}
    if details:
        rec["details"] = details
    return rec


def build_meta(plan: Plan, ctx: Context) -> dict:
    """What compressed.safetensors records besides the weights: how to rebuild, the run's data and gate."""
    recipe = plan.recipe
    d = recipe.data or {}
    m = recipe.model
    arch = m["arch"]
    return {"arch": arch, "args": m["args"], "facts": model_facts(arch, m["args"], ctx.original) if arch else None,
            "input_shape": m["input_shape"], "mean": d.get("mean"), "std": d.get("std"), "eval": d.get("eval"),
            "name": recipe.name,
            "original": {"checkpoint": m["checkpoint"], "sha256": sha256_file(m["checkpoint"]) if m["checkpoint"] else None,
                         "seed": SEED, "trusted": bool(m.get("trusted"))},
            "tokens": ctx.tokens, "gate": ctx.gate, "quantization": ctx.quantization,
            "exports": {name: {"precision": e.precision, **({"gate": e.gate} if e.gate else {})}
                        for name, e in ctx.exports.items()}}


def run_plan(plan: Plan, out: str | Path | None = None, *, force=False, resume=False, progress=True,
             model: torch.nn.Module | None = None) -> dict:
    """Run a checked plan into `out` (default artifacts/<name>); `model` is the built model (default: built
    from the recipe's [model]). Returns the report (also written as report.json and report.md)."""
    return _run_locked(plan, out, force, resume, progress, model)[0]


def _run_locked(plan: Plan, out, force, resume, progress, model) -> tuple[dict, torch.nn.Module | None]:
    """run_plan, returning the compressed module too: a stage may replace the model object (a latency target
    keeps the closest of its attempts), so the caller's module is not the result."""
    out = Path(out) if out else Path("artifacts") / plan.name
    rank = launch_rank()  # under torchrun only rank 0 writes artifacts
    with output_lock(out, enabled=rank == 0):
        return _run(plan, out, force, resume, progress, rank, model)


def _run(plan: Plan, out, force, resume, progress, rank, model) -> tuple[dict, torch.nn.Module | None]:
    recipe = plan.recipe
    ckpt_dir = staging_path(out)
    stage_dir = staging_dir(out, force, resume) if rank == 0 else Path(tempfile.mkdtemp(prefix=f"otcompress-rank{rank}-"))
    set_log_dir(stage_dir)
    example = torch.zeros((1, *recipe.model["input_shape"][1:]))
    if model is None:
        with stage_scope("loading the model", str(recipe.path)):
            model = load_model(recipe.model)
    with stage_scope("checking the model against the stages", str(recipe.path)):
        check_model(plan, model, example)
    original = copy.deepcopy(model).eval()
    for p in original.parameters():
        p.requires_grad_(False)
    d = recipe.data or {}
    probe = probe_inputs(d.get("eval"), d.get("mean"), d.get("std"), d.get("limit"), 0, recipe.model["input_shape"])
    with stage_scope("measuring the original model", str(recipe.path)):
        ref = {k: v.numpy() for k, v in predict_outputs(original, torch.from_numpy(probe.x)).items()}
        task = task_of(original, {k: torch.from_numpy(v[:1]) for k, v in ref.items()}, example)
        ctx = Context(recipe=recipe, model=model, original=original, out=stage_dir, probe=probe, ref_outputs=ref,
                      progress=progress and rank == 0, resume=resume, ckpt_dir=ckpt_dir)
        records = [measure(ctx, task, "original", {}, 0.0)]
    for i, st in enumerate(plan.stages):
        stage = STAGES[st["kind"]]
        params = {k: v for k, v in st.items() if k != "kind"}
        ctx.stage_index = i
        if progress:
            print(f"[{i + 1}/{len(plan.stages)}] {st['kind']} …", flush=True)
        t0 = time.perf_counter()
        with stage_scope(f"stages[{i}] ({st['kind']})", str(recipe.path)):
            details = stage.apply(ctx, params)
            if rank != 0 and stage.trains:
                shutil.rmtree(stage_dir, ignore_errors=True)
                return {"rank": rank, "validation": {"passed": True}, "out": str(out)}, None  # the other ranks only train
            secs = time.perf_counter() - t0
            if stage.changes_model:
                records.append(measure(ctx, task, st["kind"], params, secs, details))
            else:  # exports and validation leave the model as it was: no need to run the probe again
                rec = {k: v for k, v in records[-1].items() if k != "details"}
                rec.update(kind=st["kind"], config=params, seconds=round(secs, 3))
                if details:
                    rec["details"] = details
                records.append(rec)

    with stage_scope("saving and reloading the result"):
        save_compressed(stage_dir / "compressed.safetensors", ctx.model, build_meta(plan, ctx), fresh_copy=original)
        fresh = None if recipe.model["arch"] else copy.deepcopy(original)  # an in-memory model: no source to build
        numbers = Gate.from_dict(ctx.gate) if ctx.gate else Gate(**task.gate_defaults)
        failed = frozenset(c.check.split(":", 1)[1] for c in (ctx.validation.checks if ctx.validation is not None else ())
                           if c.check.startswith(("export:", "kernels:")) and not c)
        check = self_check(ctx.model, stage_dir / "compressed.safetensors", ctx.exports, ctx.probe.x[:8],
                           ctx.input_shape, fresh, numbers, failed)
    files = ["compressed.safetensors"] + [e.path.name for e in ctx.exports.values()]
    files += [e.gate["plan"] for e in ctx.exports.values() if e.gate and e.gate.get("plan")]
    validation = ctx.validation.as_dict() if ctx.validation is not None else {
        "passed": None, "checks": [], "note": "not validated: the recipe has no validate stage"}
    report = {
        "name": recipe.name, "recipe": str(recipe.path), "recipe_sha256": recipe.sha256, "versions": versions(),
        "task": task.name, "columns": [list(c) for c in task.columns], "probe": probe.source, "stages": records,
        "validation": validation, "self_check": check, "quantization": ctx.quantization,
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
    return report, ctx.model


def compress(model: torch.nn.Module, input_shape, stages: list[dict], data: dict | None = None,
             out: str | Path | None = None, *, name: str = "compressed", source: str | None = None,
             args: dict | None = None, checkpoint: str | Path | None = None, force: bool = False,
             progress: bool = False) -> tuple[torch.nn.Module, dict]:
    """Compress the model in your hands, as `otcompress run` compresses a recipe's: the same plan check,
    stages, artifacts and gate.

    Args:
        model: the trained model (not modified: a copy is compressed).
        input_shape: e.g. [1, 3, 224, 224] (the batch the export uses first).
        stages: the recipe's [[stages]] tables, e.g. [{"kind": "fold_bn"}, {"kind": "prune", "flops": 0.5},
            {"kind": "export_onnx"}, {"kind": "validate"}]; every key has the recipe's default.
        data: the recipe's [data] table ({"eval": path, "calib": path, "mean": [...], "std": [...], ...});
            relative paths are taken from the current directory. Default: none.
        out: the artifact folder (default: a temporary folder, removed afterwards; the report says so).
        name: the run's name (report, metadata).
        source: how the architecture is built again, as a recipe's `arch` ("torchvision:resnet18"): then
            `otcompress.load` rebuilds the result from compressed.safetensors alone. Default: none, and
            `otcompress.load(path, model=...)` needs a freshly built model of the same architecture.
        args: the source's factory arguments (as a recipe's `args`).
        checkpoint: the file the model's weights came from, recorded so `otcompress validate DIR` can rebuild
            the original (default: none, fidelity then needs --original).
        force: replace an existing `out`.
        progress: print the stage lines and table.

    Returns:
        (the compressed module, the report as report.json holds it).

    Raises:
        OTCError: a bad stage, key, value or model, as `otcompress run` reports it (one line).
    """
    import hashlib
    import json

    from .models import check_outputs
    from .plan import make_plan
    from .recipe import recipe_from_table

    table = {"name": name, "model": {"arch": source or "", "args": dict(args or {}), "input_shape": list(input_shape),
                                     **({"checkpoint": str(checkpoint)} if checkpoint else {})},
             "stages": [dict(s) for s in stages]}
    if data is not None:
        table["data"] = dict(data)
    sha = hashlib.sha256(json.dumps(table, sort_keys=True, default=str).encode()).hexdigest()
    recipe = recipe_from_table(table, "otcompress.compress()", Path.cwd() / "otcompress.compress()", sha)
    plan = make_plan(recipe)
    example = torch.zeros((1, *recipe.model["input_shape"][1:]))
    mine = check_outputs(copy.deepcopy(model).eval(), example, source or type(model).__name__)
    if out is not None:
        report, result = _run_locked(plan, out, force, False, progress, mine)
        return result, report
    with tempfile.TemporaryDirectory(prefix="otcompress-") as td:
        report, result = _run_locked(plan, Path(td) / name, True, False, progress, mine)
    report["out"] = None
    return result, report
