"""The commands end to end on the quickstart: run (report, artifacts, reload, refusal to overwrite, --force, no
validate stage, one input draw for the table and validate), load (raw uint8 images), validate (shape mismatch)."""

import json

import numpy as np
import pytest
import torch

from otcompress import load
from otcompress.artifacts import sha256_file
from otcompress.models import build_model

from .conftest import run_cli, write_recipe
from .test_dtp import DIGITS


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


@pytest.fixture
def artifact(quickstart_copy, tmp_path):
    out = tmp_path / "art"
    assert run_cli("run", quickstart_copy, "--out", out, "--quiet").exit_code == 0
    return out


def test_validate_with_an_output_shape_mismatch_fails_cleanly_and_writes_its_reports(artifact, tmp_path):
    """Was: KeyError 'atol' traceback and no JSON/JUnit."""
    from otcompress.exporters.onnx import export_onnx

    export_onnx(build_model("digits_cnn", {"num_classes": 5}), torch.zeros(1, 1, 8, 8), tmp_path / "five.onnx")
    (artifact / "model.onnx").write_bytes((tmp_path / "five.onnx").read_bytes())
    res = run_cli("validate", artifact, "--json", tmp_path / "v.json", "--junit", tmp_path / "v.xml")
    assert res.exit_code == 1 and "Traceback" not in res.output and "differs from the reference's" in res.output
    data = json.loads((tmp_path / "v.json").read_text())
    assert not data["passed"] and "shape [64, 5]" in data["checks"][0]["reason"]
    assert 'failures="1"' in (tmp_path / "v.xml").read_text()


def test_load_runs_on_raw_uint8_images_as_data_accepts_them(artifact):
    """Was: `otcompress load ... --input digits-test.npz` (uint8 NHWC) crashed."""
    res = run_cli("load", artifact / "compressed.safetensors", "--input", DIGITS / "digits-test.npz", "--limit", "100")
    assert res.exit_code == 0, res.output
    acc = float(res.output.split("accuracy ")[1].split()[0])
    assert acc > 0.8  # normalised as in the run, so the compressed model is right on most digits


def test_a_run_without_validate_does_not_say_passed(quickstart_copy, tmp_path):
    text = quickstart_copy.read_text().split('[[stages]]\nkind = "validate"')[0]
    quickstart_copy.write_text(text)
    res = run_cli("run", quickstart_copy, "--out", tmp_path / "o")
    assert res.exit_code == 0 and "validation: NOT RUN" in res.output and "PASSED" not in res.output
    assert json.loads((tmp_path / "o" / "report.json").read_text())["validation"]["passed"] is None


def test_the_stage_table_and_validate_see_the_same_seeded_inputs(tmp_path):
    """Was: both said "seed 0" but drew different random inputs (agreement 0.7969 vs 0.8281)."""
    p = write_recipe(tmp_path, """
name = "s"
[model]
arch = "digits_cnn"
input_shape = [1, 1, 8, 8]
[[stages]]
kind = "prune"
sparsity = 0.5
[[stages]]
kind = "export_onnx"
[[stages]]
kind = "validate"
min_top1_agreement = 0.0
""")
    assert run_cli("run", p, "--out", tmp_path / "o", "--quiet").exit_code == 0
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["stages"][1]["top1_agreement"] == rep["validation"]["fidelity"]["top1_agreement"]
    assert rep["validation"]["fidelity"]["samples"] == 64
