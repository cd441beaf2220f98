"""The default validation gate on real data: it passes the correct ToMe, PiToMe and OTPrune exports of
vit_tiny_p2 (keep 0.9, 256 CIFAR-10 test images; bench/gate.py uses 640) and a correct folded and pruned ResNet-20, and fails every
deliberately wrong export (tests/wrong_exports.py). The README's gate table comes from bench/gate.py."""

from __future__ import annotations

import pytest
import torch

from .conftest import shared
from .wrong_exports import CNN, VIT, WRONG_CNN, WRONG_VIT, applies, cnn_reference, images, vit_reference

METHODS = ["tome", "pitome", "otprune"]


def _judge(reference, exported, x, tmp_path):
    from otcompress.exporters.onnx import export_onnx
    from otcompress.exporters.onnxruntime import OrtRunner
    from otcompress.exporters.pytorch import TorchRunner
    from otcompress.validation import Gate, validate

    export_onnx(exported, torch.zeros(1, 3, 32, 32), tmp_path / "m.onnx", dynamic_batch=True)
    return validate(TorchRunner(reference, input_shape=[1, 3, 32, 32]), [OrtRunner(tmp_path / "m.onnx")], x, Gate()).as_dict()


@pytest.fixture(scope="module")
def vit_images():
    shared(VIT[2]), shared(VIT[3])
    return images(VIT, 256)


@pytest.mark.parametrize("method", METHODS)
def test_the_default_gate_passes_a_correct_token_export_on_256_real_images(method, vit_images, tmp_path):
    ref = vit_reference(method)
    res = _judge(ref, ref, vit_images, tmp_path)
    checks = {c["check"]: c for c in res["checks"]}
    assert res["passed"], checks
    assert checks["export:onnxruntime"]["replayed"] and checks["decisions:onnxruntime"]["observed"] >= 0.99


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", list(WRONG_VIT))
def test_the_default_gate_fails_a_wrong_token_export(method, case, vit_images, tmp_path):
    if not applies(case, method):
        pytest.skip(f"{case!r} is not wrong for {method} in drop mode: no token is ever merged, sizes stay 1")
    ref = vit_reference(method)
    res = _judge(ref, WRONG_VIT[case](ref), vit_images[:32], tmp_path)
    assert not res["passed"]
    assert any(not c["passed"] for c in res["checks"] if c["check"].split(":")[0] in ("export", "decisions"))


def test_the_default_gate_passes_a_correct_cnn_export_and_fails_every_wrong_one(tmp_path):
    shared(CNN[2]), shared(CNN[3])
    x = images(CNN, 256)
    ref, chosen = cnn_reference()
    assert _judge(ref, ref, x, tmp_path)["passed"]
    for case, make in WRONG_CNN.items():
        res = _judge(ref, make(ref, chosen), x[:64], tmp_path)
        assert not res["passed"], case
