"""The runner end to end on the quickstart: report, artifacts, reload, refusal to overwrite, --force."""

import json

import numpy as np
import torch

from otcompress import load
from otcompress.artifacts import sha256_file

from .conftest import run_cli


def test_quickstart_run_report_artifacts_and_reload(quickstart_copy, tmp_path):
    ckpt = quickstart_copy.parent / "data" / "digits_cnn.safetensors"
    before = sha256_file(ckpt)
    out = tmp_path / "out"
    res = run_cli("run", quickstart_copy, "--out", out)
    assert res.exit_code == 0, res.output
    assert "intrafusion" in res.output and "validation: PASSED" in res.output
    assert sha256_file(ckpt) == before  # inputs are never modified
    rep = json.loads((out / "report.json").read_text())
    for key in ("name", "recipe_sha256", "versions", "stages", "validation", "files"):
        assert key in rep
    kinds = [s["kind"] for s in rep["stages"]]
    assert kinds == ["original", "fold_bn", "intrafusion", "repair", "export_onnx", "validate"]
    for s in rep["stages"]:
        assert {"kind", "params", "flops", "top1_agreement", "max_abs_error", "accuracy"} <= set(s)
    orig, fused = rep["stages"][0], rep["stages"][2]
    assert fused["params"] < orig["params"] and fused["flops"] < orig["flops"]
    assert rep["validation"]["passed"] is True
    for name, digest in rep["files"].items():
        assert sha256_file(out / name) == digest
    assert (out / "report.md").read_text().startswith("# quickstart")
    # compressed.safetensors rebuilds the shrunk model without the recipe; outputs equal the run's
    model = load(out / "compressed.safetensors")
    z = np.load(quickstart_copy.parent / "data" / "digits-test.npz")
    x = (torch.from_numpy(z["x"]).permute(0, 3, 1, 2).float() / 255 - 0.3063) / 0.3769
    with torch.no_grad():
        acc = (model(x).argmax(-1).numpy() == z["y"]).mean()
    assert abs(acc - rep["stages"][-1]["accuracy"]) < 1e-6
    res = run_cli("load", out / "compressed.safetensors")
    assert res.exit_code == 0 and "digits_cnn" in res.output


def test_second_run_refuses_without_force_and_keeps_first(quickstart_copy, tmp_path):
    out = tmp_path / "out"
    assert run_cli("run", quickstart_copy, "--out", out, "--quiet").exit_code == 0
    digest = sha256_file(out / "compressed.safetensors")
    res = run_cli("run", quickstart_copy, "--out", out, "--set", "stages.1.sparsity=0.1")
    assert res.exit_code == 2 and "--force" in res.output
    assert sha256_file(out / "compressed.safetensors") == digest
    res = run_cli("run", quickstart_copy, "--out", out, "--force", "--quiet", "--set", "stages.1.sparsity={conv4 = 0.25}")
    assert res.exit_code == 0
    assert sha256_file(out / "compressed.safetensors") != digest
    assert not [p for p in tmp_path.glob(".out.*") if p.is_dir()]  # no staging folders left behind


def test_failed_gate_exits_1_and_keeps_artifacts(quickstart_copy, tmp_path):
    out = tmp_path / "out"
    res = run_cli("run", quickstart_copy, "--out", out, "--quiet", "--set", "stages.4.min_top1_agreement=1.0",
                  "--set", "stages.1.sparsity=0.5")
    assert res.exit_code == 1
    rep = json.loads((out / "report.json").read_text())
    assert rep["validation"]["passed"] is False


def test_cli_version_help_inspect_doctor(quickstart_copy):
    assert "0.1.0" in run_cli("--version").output
    for cmd in ("run", "load", "inspect", "validate", "bench", "doctor"):
        res = run_cli(cmd, "--help")
        assert res.exit_code == 0 and "Usage" in res.output
    res = run_cli("inspect", quickstart_copy)
    assert res.exit_code == 0 and "conv4" in res.output and "64" in res.output
    res = run_cli("doctor")
    assert "onnxruntime" in res.output and "CPUExecutionProvider" in res.output and "tensorrt" in res.output
