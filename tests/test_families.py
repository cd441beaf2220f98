"""The models users bring, end to end from a recipe on CPU (random weights made meaningful, small inputs):
every CNN family through fold_bn -> intrafusion -> ONNX -> validate and through prune -> dtp, every ViT
family through tokens -> ONNX -> validate; each result must reload (`otcompress load`) and validate from
compressed.safetensors alone (`otcompress validate DIR`: reload = ONNX, decisions replayed for ViTs)."""

import json
import time

import pytest

from .conftest import run_cli
from .families import CNNS, VITS, materialise, recipe, record, train_data

EXPORT = """
[[stages]]
kind = "export_onnx"
[[stages]]
kind = "validate"
samples = 16
min_top1_agreement = 0.0
"""


def _run(tmp_path, text, name):
    p = tmp_path / f"{name}.toml"
    p.write_text(text)
    out = tmp_path / name
    t0 = time.perf_counter()
    res = run_cli("run", p, "--out", out, "--quiet")
    return res, out, time.perf_counter() - t0


def _stage(out, kind):
    rep = json.loads((out / "report.json").read_text())
    return rep, next(s for s in rep["stages"] if s["kind"] == kind)


@pytest.mark.parametrize("case", CNNS, ids=[c.id for c in CNNS])
def test_cnn_family_intrafusion_export_validate_reload(case, tmp_path):
    arch, ckpt = materialise(case, tmp_path / "models")
    stages = '[[stages]]\nkind = "fold_bn"\n[[stages]]\nkind = "intrafusion"\nsparsity = 0.3\n' + EXPORT
    res, out, secs = _run(tmp_path, recipe(case, arch, ckpt, stages), "a")
    assert res.exit_code == 0, res.output
    rep, st = _stage(out, "intrafusion")
    shrunk = [g for g in st["details"]["groups"] if g["after"] < g["before"]]
    assert shrunk and st["flops"] < rep["stages"][0]["flops"] and rep["validation"]["passed"]
    logits = rep["stages"][0]
    assert logits["top1_agreement"] == 1.0
    for c in rep["validation"]["checks"]:  # the export check ran and passed on logits of a real scale (sensible_init
        if c["check"].startswith("export:"):  # asserts it); an absolute bound alone would fail nets whose logits reach 30+
            assert c["passed"] and c["failing_elements"] == 0, c
    assert run_cli("load", out / "compressed.safetensors").exit_code == 0
    v = run_cli("validate", out)
    assert v.exit_code == 0, v.output
    record({"model": case.arch, "intrafusion": True, "export": True, "reload": True, "fold_bn": True,
            "groups": len(st["details"]["groups"]), "shrunk": len(shrunk), "left_whole": len(st["details"]["left_whole"]),
            "flops_ratio": st["flops"] / rep["stages"][0]["flops"], "seconds_intrafusion": st["seconds"]})


@pytest.mark.parametrize("case", CNNS, ids=[c.id for c in CNNS])
def test_cnn_family_prune_then_dtp_reload(case, tmp_path):
    arch, ckpt = materialise(case, tmp_path / "models")
    data = train_data(tmp_path, case.size)
    stages = ('[[stages]]\nkind = "prune"\nsparsity = 0.2\n'
              '[[stages]]\nkind = "dtp"\nsparsity = 0.2\nmask_epochs = 1\nfinetune_epochs = 1\nbatch_size = 8\n'
              'device = "cpu"\naugment = "none"\n')
    res, out, secs = _run(tmp_path, recipe(case, arch, ckpt, stages, data), "b")
    assert res.exit_code == 0, res.output
    rep, prune = _stage(out, "prune")
    _, dtp = _stage(out, "dtp")
    assert any(g["after"] < g["before"] for g in prune["details"]["groups"])
    assert any(g["after"] < g["before"] for g in dtp["details"]["groups"]) and dtp["flops"] < prune["flops"]
    assert rep["self_check"]["reload_max_abs"] <= 1e-5
    assert run_cli("load", out / "compressed.safetensors").exit_code == 0
    record({"model": case.arch, "prune": True, "dtp": True, "reload": True, "seconds_prune": prune["seconds"],
            "seconds_dtp": dtp["seconds"]})


@pytest.mark.parametrize("case", VITS, ids=[c.id for c in VITS])
def test_vit_family_tokens_export_validate_reload(case, tmp_path):
    arch, ckpt = materialise(case, tmp_path / "models")
    stages = f'[[stages]]\nkind = "tokens"\nmethod = "{case.method}"\nkeep = 0.75\n' + EXPORT
    res, out, secs = _run(tmp_path, recipe(case, arch, ckpt, stages), "t")
    assert res.exit_code == 0, res.output
    rep, st = _stage(out, "tokens")
    assert st["flops"] < rep["stages"][0]["flops"] and rep["validation"]["passed"]
    assert st["details"]["tokens_after_block"][-1] < st["details"]["tokens_in"]
    checks = {c["check"]: c for c in rep["validation"]["checks"]}
    assert checks["export:onnxruntime"]["replayed"] and checks["export:onnxruntime"]["max_abs"] < 1e-3
    assert run_cli("load", out / "compressed.safetensors").exit_code == 0
    v = run_cli("validate", out)
    assert v.exit_code == 0, v.output
    record({"model": case.arch, "tokens": case.method, "export": True, "reload": True,
            "flops_ratio": st["flops"] / rep["stages"][0]["flops"], "adapter": st["details"]["adapter"]})
