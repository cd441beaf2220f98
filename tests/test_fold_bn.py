"""BN folding is exact (real eps) and leaves no BatchNormalization in the exported graph."""

import onnx
import pytest
import torch
import torch.nn as nn

from otcompress.exporters.onnx import export_onnx
from otcompress.channels.fold_bn import fold_batchnorm
from otcompress.models import build_model

from .conftest import CNN_ZOO, randomize_bn


@pytest.mark.parametrize("arch,args,shape", CNN_ZOO, ids=[c[0] for c in CNN_ZOO])
def test_fold_bn_is_exact(arch, args, shape):
    model = randomize_bn(build_model(arch, args))
    x = torch.randn(4, *shape[1:])
    with torch.no_grad():
        ref = model(x)
    info = fold_batchnorm(model, x[:1])
    with torch.no_grad():
        out = model(x)
    assert info["folded"] and not info["kept"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert ((out - ref).abs().max() / ref.abs().max()).item() < 1e-5


def test_eps_matters_and_is_used():
    conv, bn = nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4, eps=0.5).eval()
    bn.running_var.fill_(0.01)
    model = nn.Sequential(conv, bn).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
    fold_batchnorm(model, x[:1])
    with torch.no_grad():
        assert torch.allclose(model(x), ref, atol=1e-6)  # with eps ignored the scale would be off by ~7x


def test_unfoldable_bn_is_kept_and_listed(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)).eval()
    randomize_bn(model)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
    info = fold_batchnorm(model, x[:1])
    assert info["folded"] == ["4"] and [k["name"] for k in info["kept"]] == ["2"]
    with torch.no_grad():
        assert torch.allclose(model(x), ref, atol=1e-5)


def test_folded_onnx_has_no_batchnorm(tmp_path):
    model = randomize_bn(build_model("cifar_resnet20"))
    fold_batchnorm(model, torch.zeros(1, 3, 32, 32))
    export_onnx(model, torch.zeros(1, 3, 32, 32), tmp_path / "m.onnx")
    ops = {n.op_type for n in onnx.load(tmp_path / "m.onnx").graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops
