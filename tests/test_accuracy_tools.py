"""FLOPs targets, the repair stage and the sweep: targets land within 2%, repair folds its corrections into
the weights (no new graph nodes), leaves an unshrunk model unchanged and recovers accuracy of a shrunk one,
and explains what it needs without calibration data; sweep writes its table and plot and names the
smallest model within the accuracy budget."""

import json

import onnx
import pytest
import torch

from otcompress.channels.shrink import shrink_channels
from otcompress.metrics import count_flops
from otcompress.models import build_model

from .conftest import randomize_bn, run_cli


@pytest.mark.parametrize("allocation", ["uniform", "global"])
@pytest.mark.parametrize("arch,shape", [("cifar_resnet56", [1, 3, 32, 32]), ("cifar_mobilenetv2", [1, 3, 32, 32])])
def test_flops_targets_land_within_2_percent(arch, shape, allocation):
    model = randomize_bn(build_model(arch))
    full = count_flops(model, shape)
    shrink_channels(model, torch.zeros(shape), "prune", flops=0.5, allocation=allocation, progress=False)
    assert abs(count_flops(model, shape) / full - 0.5) <= 0.02 * 0.5


def _recipe(tmp_path, stages, data=True):
    d = ('[data]\neval = "data/digits-test.npz"\ntrain = "data/digits-train.npz"\nmean = [0.3063]\nstd = [0.3769]\n'
         if data else "")
    p = tmp_path / "recipes" / "r.toml"
    p.write_text('name = "acc"\n[model]\narch = "digits_cnn"\ncheckpoint = "data/digits_cnn.safetensors"\n'
                 f'input_shape = [1, 1, 8, 8]\n{d}{stages}')
    return p


def _report(out):
    return json.loads((out / "report.json").read_text())


def test_repair_recovers_accuracy_and_adds_no_graph_nodes(quickstart_copy, tmp_path):
    base = '[[stages]]\nkind = "fold_bn"\n[[stages]]\nkind = "prune"\nsparsity = 0.6\n'
    tail = '[[stages]]\nkind = "export_onnx"\n'
    p = _recipe(quickstart_copy.parent.parent, base + tail)
    assert run_cli("run", p, "--out", tmp_path / "plain", "--quiet").exit_code == 0
    p = _recipe(quickstart_copy.parent.parent, base + '[[stages]]\nkind = "repair"\nsamples = 256\n' + tail)
    assert run_cli("run", p, "--out", tmp_path / "repaired", "--quiet").exit_code == 0
    plain, fixed = _report(tmp_path / "plain"), _report(tmp_path / "repaired")
    assert fixed["stages"][3]["accuracy"] > plain["stages"][2]["accuracy"] + 0.05
    assert fixed["stages"][3]["details"]["layers"]  # corrections happened
    ops = lambda f: sorted(n.op_type for n in onnx.load(str(f)).graph.node)  # noqa: E731
    assert ops(tmp_path / "plain" / "model.onnx") == ops(tmp_path / "repaired" / "model.onnx")


def test_repair_leaves_an_unshrunk_folded_model_as_it_was():
    from otcompress.channels.fold_bn import fold_batchnorm
    from otcompress.channels.repair import reference, repair

    torch.manual_seed(0)
    model = randomize_bn(build_model("cifar_resnet20"))
    original = build_model("cifar_resnet20")
    original.load_state_dict(model.state_dict())
    fold_batchnorm(model, torch.zeros(1, 3, 32, 32))
    x = torch.randn(64, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    repair(model, reference(original, True, torch.zeros(1, 3, 32, 32)), x, {}, progress=False)
    with torch.no_grad():
        assert ((model(x) - before).abs().max() / before.abs().max()).item() < 1e-4


def test_repair_without_calibration_images_explains_what_it_needs(quickstart_copy, tmp_path):
    p = _recipe(quickstart_copy.parent.parent, '[[stages]]\nkind = "prune"\nsparsity = 0.5\n[[stages]]\nkind = "repair"\n',
                data=False)
    res = run_cli("run", p, "--out", tmp_path / "o")
    assert res.exit_code == 2 and "repair needs calibration images" in res.output and "[data].calib" in res.output


def test_sweep_writes_table_and_plot_and_names_the_smallest_within_budget(quickstart_copy, tmp_path):
    out = tmp_path / "sw"
    res = run_cli("sweep", quickstart_copy, "--flops", "0.9,0.6", "--out", out, "--runs", "3")
    assert res.exit_code == 0, res.output
    data = json.loads((out / "sweep.json").read_text())
    assert [p["point"] for p in data["points"]] == ["flops-0.9", "flops-0.6"]
    assert all(abs(p["flops"] - t) <= 0.05 for p, t in zip(data["points"], (0.9, 0.6)))
    assert data["smallest_within_budget"] in ("flops-0.9", "flops-0.6") and (out / "sweep.png").stat().st_size > 1000
    assert "smallest within the accuracy budget" in res.output and (out / data["smallest_within_budget"] / "model.onnx").exists()
    res = run_cli("sweep", quickstart_copy, "--flops", "0.3", "--out", tmp_path / "tight", "--max-accuracy-drop", "0.0")
    assert res.exit_code == 1 and "no point is within the accuracy budget" in res.output
