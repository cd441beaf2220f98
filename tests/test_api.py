"""The Python API on the model in your hands: `otcompress.compress` gives the files and report the equivalent
recipe gives; a result compressed without a model source reloads onto a fresh model; `inspect` takes a model
source alone."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from safetensors import safe_open

import otcompress
from otcompress.errors import OTCError

from .conftest import run_cli, write_recipe
from .families import sensible_init

STAGES = [{"kind": "fold_bn"}, {"kind": "prune", "flops": 0.6}, {"kind": "export_onnx"},
          {"kind": "validate", "samples": 16, "min_top1_agreement": 0.0}]


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    sensible_init(model, torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    ckpt = tmp_path_factory.mktemp("ckpt") / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    return model.eval(), ckpt


def _tensors(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["otcompress"])


def test_compress_gives_the_files_and_report_of_the_equivalent_recipe(resnet, tmp_path):
    model, ckpt = resnet
    before = {k: v.clone() for k, v in model.state_dict().items()}
    p = write_recipe(tmp_path, f"""
name = "api"
[model]
arch = "torchvision:resnet18"
args = {{num_classes = 10}}
checkpoint = "{ckpt}"
input_shape = [1, 3, 32, 32]
[[stages]]
kind = "fold_bn"
[[stages]]
kind = "prune"
flops = 0.6
[[stages]]
kind = "export_onnx"
[[stages]]
kind = "validate"
samples = 16
min_top1_agreement = 0.0
""")
    assert run_cli("run", p, "--out", tmp_path / "recipe", "--quiet").exit_code == 0
    small, report = otcompress.compress(model, [1, 3, 32, 32], STAGES, out=tmp_path / "api", name="api",
                                        source="torchvision:resnet18", args={"num_classes": 10}, checkpoint=ckpt)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the user's model is untouched
    a, meta_a = _tensors(tmp_path / "recipe" / "compressed.safetensors")
    b, meta_b = _tensors(tmp_path / "api" / "compressed.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) and meta_a == meta_b
    ga, gb = (onnx.load(str(tmp_path / d / "model.onnx")) for d in ("recipe", "api"))
    assert ga.graph.SerializeToString() == gb.graph.SerializeToString()
    rep = json.loads((tmp_path / "recipe" / "report.json").read_text())
    strip = lambda stages: [{k: v for k, v in s.items() if k != "seconds"} for s in stages]  # noqa: E731
    assert strip(report["stages"]) == strip(rep["stages"])
    assert report["validation"] == rep["validation"] and report["validation"]["passed"]
    assert report["files"] == rep["files"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(otcompress.load(tmp_path / "api" / "compressed.safetensors")(x), small(x))


def test_a_result_without_a_source_reloads_onto_a_fresh_model(resnet, tmp_path):
    import torchvision

    model, _ = resnet
    small, report = otcompress.compress(model, [1, 3, 32, 32], STAGES[:2], out=tmp_path / "o")
    assert report["stages"][-1]["flops"] < report["stages"][0]["flops"]
    path = tmp_path / "o" / "compressed.safetensors"
    with pytest.raises(OTCError, match="model=") as e:
        otcompress.load(path)
    assert "without a source" in str(e.value)
    again = otcompress.load(path, model=torchvision.models.resnet18(weights=None, num_classes=10))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), small(x))
    with pytest.raises(OTCError, match=r"stages\[1\]\.sparsty: unknown key — did you mean 'sparsity'"):
        otcompress.compress(model, [1, 3, 32, 32], [{"kind": "fold_bn"}, {"kind": "prune", "sparsty": 0.5}])


def test_inspect_takes_a_model_source_alone():
    res = run_cli("inspect", "torchvision:resnet18", "--input-shape", "1,3,64,64", "--args", "{num_classes = 10}")
    assert res.exit_code == 0, res.output
    assert "outputs (classification): logits [1, 10]" in res.output and "channel groups (all scope): " in res.output
    assert "layer1.0.conv1" in res.output
    res = run_cli("inspect", "torchvision:resnet18")
    assert res.exit_code == 2 and "needs --input-shape" in res.output
    res = run_cli("inspect", "torchvision:resnet18", "--input-shape", "1,3,x")
    assert res.exit_code == 2 and "--input-shape '1,3,x'" in res.output
