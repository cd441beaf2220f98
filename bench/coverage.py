"""Supported-model coverage: runs the family test matrix (tests/test_families.py: every model from a recipe,
random weights, CPU) and collects what each model went through; beside it, tries Torch-Pruning's own
MagnitudePruner on the same model at the same ratio (30%, L1, classifier kept), each in a subprocess with a
time limit. Writes bench/results/coverage.json and the table between the coverage markers in README.md.

    .venv/bin/python bench/coverage.py [--tp-timeout 300] [--rows FILE] [--tp-only FILE | --tp FILE]

--rows reuses the rows a `make test` run wrote with OTC_COVERAGE_JSON=FILE; --tp-only/--tp measure Torch-Pruning
separately and reuse it (the two halves can run side by side).
"""

from __future__ import annotations

import argparse
import json
import os
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
    args = ap.parse_args()
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
