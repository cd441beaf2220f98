"""Supported-model coverage: runs the family test matrix (tests/test_families.py: every model from a recipe,
random weights, CPU) and collects what each model went through; beside it, tries Torch-Pruning's own
MagnitudePruner on the same model at the same ratio (30%, L1, classifier kept), each in a subprocess with a
time limit. Writes bench/results/coverage.json and the table between the coverage markers in README.md.

    .venv/bin/python bench/coverage.py [--tp-timeout 300] [--rows FILE] [--tp-only FILE | --tp FILE]
    .venv/bin/python bench/coverage.py --timm-sample 24 --seed 0 [--timeout 900]
    .venv/bin/python bench/coverage.py --seed 0 --rerun NAME[,NAME]   (drawn models again, after a fix)

--rows reuses the rows a `make test` run wrote with OTC_COVERAGE_JSON=FILE; --tp-only/--tp measure Torch-Pruning
separately and reuse it (the two halves can run side by side).

--timm-sample N --seed S: N CNN architectures drawn at random from timm.list_models() (the population: every
model of a convolutional or hybrid family, transformer and MLP families left out, at most 40M parameters), each
with random weights made meaningful, at 96x96 or its own fixed input size: fold_bn -> prune 0.3 -> ONNX ->
validate -> reload (`otcompress load`, `otcompress validate DIR`), one subprocess per model; Torch-Pruning's
MagnitudePruner beside each. A model timm cannot build is skipped and said so. Writes
bench/results/coverage_timm_seed<S>.json and the table between the timm-sample markers in README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.families import CNNS, VITS  # noqa: E402
from scripts.fill_readme import fill  # noqa: E402


def torch_pruning_one(arch: str) -> dict:
    """Torch-Pruning 1.x on one model: MagnitudePruner, L1, pruning_ratio 0.3, the last linear ignored."""
    import torch
    import torch_pruning as tp

    from tests.families import Case, materialise

    case = next(c for c in CNNS if c.arch == arch)
    with tempfile.TemporaryDirectory() as td:
        from otcompress.models import build_model
        from otcompress.models.checkpoint import load_weights, read_state_dict

        built, ckpt = materialise(Case(case.arch, case.args, case.size), Path(td))
        model = build_model(built, case.args if ckpt else {})
        if ckpt:
            load_weights(model, read_state_dict(ckpt), ckpt)
    x = torch.randn(1, 3, case.size, case.size)
    head = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1]
    before = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=0.3, ignored_layers=[head])
    pruner.step()
    with torch.no_grad():
        y = model(x)
    after = sum(p.numel() for p in model.parameters())
    return {"ok": bool(torch.isfinite(y).all()) and after < before, "params_ratio": after / before,
            "seconds": time.perf_counter() - t0}


def torch_pruning(arch: str, timeout: int) -> dict:
    try:
        r = subprocess.run([sys.executable, __file__, "--tp-one", arch], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"no result after {timeout} s"}
    if r.returncode != 0:
        last = [line for line in r.stderr.strip().splitlines() if line.strip()][-1:] or ["?"]
        return {"ok": False, "error": last[0][:160]}
    return json.loads(r.stdout.strip().splitlines()[-1])


# timm modules of transformer and MLP families: not CNNs (the random draw takes every other module's models)
NOT_CNN = {"beit", "cait", "coat", "convit", "crossvit", "davit", "deepseek_vit", "deit", "eva", "efficientformer",
           "efficientformer_v2", "gcvit", "gemma4_vit", "hiera", "hieradet_sam2", "levit", "maxxvit", "mlp_mixer",
           "mvitv2", "naflexvit", "nest", "pit", "pvt_v2", "qwen3_vit", "sequencer", "swin_transformer",
           "swin_transformer_v2", "swin_transformer_v2_cr", "tiny_vit", "tnt", "twins", "vision_transformer",
           "vision_transformer_hybrid", "vision_transformer_relpos", "vision_transformer_sam", "vitamin", "volo",
           "xcit", "visformer"}
MAX_PARAMS = 40e6
TIMM_STAGES = """
[[stages]]
kind = "fold_bn"
[[stages]]
kind = "prune"
sparsity = 0.3
[[stages]]
kind = "export_onnx"
[[stages]]
kind = "validate"
samples = 8
min_top1_agreement = 0.0
"""


def timm_population() -> list[str]:
    import timm
    import timm.models._registry as registry

    out = []
    for mod, names in registry._module_to_models.items():
        if mod not in NOT_CNN:
            out += [n for n in names if timm.is_model(n)]
    return sorted(set(out))


def timm_params(name: str) -> int | None:
    """Parameters of a timm model, built on the meta device (no memory, no init); None where it does not build."""
    import timm
    import torch

    try:
        with torch.device("meta"):
            m = timm.create_model(name, pretrained=False, num_classes=10)
    except Exception:
        return None
    return sum(p.numel() for p in m.parameters())


def timm_draw(n: int, seed: int) -> tuple[list[str], list[dict]]:
    """n architectures of at most MAX_PARAMS parameters in a seeded random order; what was skipped and why."""
    import random

    names = timm_population()
    random.Random(seed).shuffle(names)
    chosen, skipped = [], []
    for name in names:
        if len(chosen) == n:
            break
        p = timm_params(name)
        if p is None:
            skipped.append({"model": name, "why": "timm cannot build it here"})
        elif p > MAX_PARAMS:
            skipped.append({"model": name, "why": f"{p / 1e6:.0f}M parameters (> 40M)"})
        else:
            chosen.append(name)
    return chosen, skipped


def timm_one(name: str) -> dict:
    """One drawn model end to end from a recipe (see --timm-sample)."""
    import torch
    import timm
    from safetensors.torch import save_file

    from tests.conftest import run_cli
    from tests.families import sensible_init

    cfg = timm.models.get_pretrained_cfg(name)
    size = cfg.input_size[-1] if cfg is not None and getattr(cfg, "fixed_input_size", False) else 96
    row = {"model": f"timm:{name}", "size": size}
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    row["params"] = sum(p.numel() for p in model.parameters())
    x = torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(1))
    try:
        sensible_init(model, x)
    except AssertionError as e:
        row["note"] = f"random weights degenerate ({e}); run anyway"
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        ckpt = td / "m.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
        recipe = td / "r.toml"
        recipe.write_text(f'name = "m"\n[model]\narch = "timm:{name}"\nargs = {{num_classes = 10}}\ncheckpoint = "{ckpt}"\n'
                          f"input_shape = [1, 3, {size}, {size}]\n" + TIMM_STAGES)
        t0 = time.perf_counter()
        res = run_cli("run", recipe, "--out", td / "out", "--quiet")
        row["seconds"] = round(time.perf_counter() - t0, 1)
        lines = res.output.strip().splitlines()
        last = " | ".join([ln.strip() for ln in lines if "FAIL" in ln or "error" in ln] or lines[-1:])
        row["exit"] = res.exit_code
        if res.exit_code == 0:
            rep = json.loads((td / "out" / "report.json").read_text())
            st = rep["stages"][2]
            groups = st["details"]["groups"]
            row.update(shrunk=sum(g["after"] < g["before"] for g in groups), left_whole=len(st["details"]["left_whole"]),
                       flops_ratio=st["flops"] / rep["stages"][0]["flops"])
            load = run_cli("load", td / "out" / "compressed.safetensors")
            val = run_cli("validate", td / "out")
            row["result"] = "ok" if load.exit_code == 0 and val.exit_code == 0 else "failed"
            if row["result"] != "ok":
                text = (load.output + val.output).strip().splitlines()
                row["message"] = " | ".join([ln.strip() for ln in text if "FAIL" in ln or "error" in ln] or text[-1:])[:600]
        else:
            row["result"] = "refused" if res.exit_code == 2 else "failed"
            row["message"] = last[:600]
    return row


def torch_pruning_timm(name: str, size: int) -> dict:
    """Torch-Pruning's MagnitudePruner (L1, 30%, the classifier ignored) on the same random model."""
    import timm
    import torch
    import torch_pruning as tp

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, size, size)
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    ignored = [m for m in ([head] if isinstance(head, torch.nn.Module) else []) if sum(1 for _ in m.parameters())]
    before = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                       pruning_ratio=0.3, ignored_layers=ignored)
    pruner.step()
    with torch.no_grad():
        y = model(x)
    after = sum(p.numel() for p in model.parameters())
    return {"ok": bool(torch.isfinite(y).all()) and after < before, "params_ratio": after / before,
            "seconds": time.perf_counter() - t0}


def _subprocess(args: list[str], timeout: int) -> dict:
    try:
        r = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"ok": False, "result": "failed", "error": f"no result after {timeout} s"}
    if r.returncode != 0 or not r.stdout.strip():
        last = [line for line in r.stderr.strip().splitlines() if line.strip()][-1:] or ["?"]
        return {"ok": False, "result": "failed", "error": last[0][:200]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def timm_table(rows: list[dict], skipped: list[dict], seed: int) -> str:
    ok = sum(r["result"] == "ok" for r in rows)
    refused = [r for r in rows if r["result"] == "refused"]
    failed = [r for r in rows if r["result"] == "failed"]
    tp_ok = sum(bool(r.get("torch_pruning", {}).get("ok")) for r in rows)
    lines = [f"Seed {seed}: {len(rows)} drawn, **{ok} end to end**, {len(refused)} refused before any work, "
             f"{len(failed)} failed; Torch-Pruning's MagnitudePruner pruned {tp_ok} of {len(rows)}"
             + (f" ({len(skipped)} skipped while drawing: " + "; ".join(f"{s['model']}: {s['why']}" for s in skipped[:6])
                + (" …" if len(skipped) > 6 else "") + ")" if skipped else "") + ".", "",
             "| model | params | input | otcompress | groups shrunk / left whole | FLOPs kept | Torch-Pruning (30%) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        msg = re.sub(r"^error: \S+: (loading the model: )?", "", r.get("message", r.get("error", "")))  # the temp recipe's path
        res = "✓" if r["result"] == "ok" else f"{'refused' if r['result'] == 'refused' else '✗'}: {msg[:220]}"
        tp = r.get("torch_pruning") or {}
        tp_cell = "✓" if tp.get("ok") else f"✗ {tp.get('error', 'no reduction')[:80]}"
        groups = f"{r['shrunk']} / {r['left_whole']}" if "shrunk" in r else "—"
        flops = f"{r['flops_ratio']:.2f}" if "flops_ratio" in r else "—"
        lines.append(f"| `{r['model']}` | {r.get('params', 0) / 1e6:.1f}M | {r.get('size', '?')} | {res} | {groups} | {flops} | {tp_cell} |")
    return "\n".join(lines)


def table(rows: dict) -> str:
    mark = lambda v: "✓" if v is True else ("—" if v is None else ("✗" if v is False else str(v)))  # noqa: E731
    lines = ["| model | prune | intrafusion | dtp | tokens | export + validate | reload | groups shrunk / left whole | "
             "FLOPs kept at 30% | Torch-Pruning MagnitudePruner (30%) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        tp = r.get("torch_pruning")
        tp_cell = "—" if tp is None else ("✓" if tp.get("ok") else f"✗ {tp.get('error', 'no reduction')}")
        shrunk = f"{r['shrunk']} / {r['left_whole'] - 1}" if "shrunk" in r else "—"  # the logits group is always whole
        lines.append(f"| `{name}` | {mark(r.get('prune'))} | {mark(r.get('intrafusion'))} | {mark(r.get('dtp'))} | "
                     f"{r.get('tokens') or '—'} | {mark(r.get('export'))} | {mark(r.get('reload'))} | {shrunk} | "
                     f"{r['flops_ratio']:.2f} | {tp_cell} |" if "flops_ratio" in r else
                     f"| `{name}` | {mark(r.get('prune'))} | {mark(r.get('intrafusion'))} | {mark(r.get('dtp'))} | "
                     f"{r.get('tokens') or '—'} | {mark(r.get('export'))} | {mark(r.get('reload'))} | {shrunk} | — | {tp_cell} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tp-one")
    ap.add_argument("--tp-timeout", type=int, default=300)
    ap.add_argument("--rows", help="rows written by an earlier test run (skip running the tests)")
    ap.add_argument("--tp-only", help="measure Torch-Pruning on every CNN into this JSON file and stop")
    ap.add_argument("--tp", help="Torch-Pruning results from an earlier --tp-only run")
    ap.add_argument("--timm-sample", type=int, help="draw this many timm CNNs at random (see the docstring)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=int, default=900, help="seconds per drawn model")
    ap.add_argument("--timm-one")
    ap.add_argument("--rerun", help="with --timm-sample's seed: run these drawn models again (comma-separated) "
                                    "and redo the table")
    ap.add_argument("--tp-timm", nargs=2, metavar=("NAME", "SIZE"))
    args = ap.parse_args()
    if args.timm_one:
        print(json.dumps(timm_one(args.timm_one)))
        return
    if args.tp_timm:
        print(json.dumps(torch_pruning_timm(args.tp_timm[0], int(args.tp_timm[1]))))
        return
    if args.rerun:
        out = ROOT / "bench" / "results" / f"coverage_timm_seed{args.seed}.json"
        res = json.loads(out.read_text())
        for name in args.rerun.split(","):
            i = next(i for i, r in enumerate(res["rows"]) if r["model"] == f"timm:{name}")
            row = _subprocess(["--timm-one", name], args.timeout)
            row.setdefault("model", f"timm:{name}")
            row["torch_pruning"] = res["rows"][i].get("torch_pruning")
            res["rows"][i] = row
            print(json.dumps(row), flush=True)
        out.write_text(json.dumps(res, indent=2) + "\n")
        md = timm_table(res["rows"], res["skipped"], args.seed)
        fill("timm-sample", md, required=False)
        print(md)
        return
    if args.timm_sample:
        names, skipped = timm_draw(args.timm_sample, args.seed)
        print(f"drew {len(names)}: {', '.join(names)}", flush=True)
        rows = []
        for name in names:
            row = _subprocess(["--timm-one", name], args.timeout)
            row.setdefault("model", f"timm:{name}")
            row["torch_pruning"] = _subprocess(["--tp-timm", name, str(row.get("size", 96))], args.tp_timeout)
            rows.append(row)
            print(json.dumps(row), flush=True)
        out = ROOT / "bench" / "results" / f"coverage_timm_seed{args.seed}.json"
        out.write_text(json.dumps({"seed": args.seed, "rows": rows, "skipped": skipped}, indent=2) + "\n")
        md = timm_table(rows, skipped, args.seed)
        fill("timm-sample", md, required=False)
        print(md)
        return
    if args.tp_one:
        print(json.dumps(torch_pruning_one(args.tp_one)))
        return
    if args.tp_only:
        res = {}
        for c in CNNS:
            res[c.arch] = torch_pruning(c.arch, args.tp_timeout)
            print(c.arch, res[c.arch], flush=True)
        Path(args.tp_only).write_text(json.dumps(res, indent=2) + "\n")
        return
    rows_file = Path(args.rows) if args.rows else Path(tempfile.mkdtemp()) / "rows.jsonl"
    if not args.rows:
        env = dict(os.environ, OTC_COVERAGE_JSON=str(rows_file))
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_families.py"],
                           cwd=ROOT, env=env)
        print(f"family tests: exit {r.returncode} in {time.perf_counter() - t0:.0f} s")
    rows: dict[str, dict] = {c.arch: {} for c in CNNS + VITS}
    for line in rows_file.read_text().splitlines():
        row = json.loads(line)
        rows[row.pop("model")].update(row)
    earlier = json.loads(Path(args.tp).read_text()) if args.tp else {}
    for c in CNNS:
        rows[c.arch]["torch_pruning"] = earlier.get(c.arch) or torch_pruning(c.arch, args.tp_timeout)
        print(c.arch, rows[c.arch]["torch_pruning"], flush=True)
    out = ROOT / "bench" / "results" / "coverage.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    md = table(rows)
    fill("coverage", md)
    print(md)


if __name__ == "__main__":
    main()
