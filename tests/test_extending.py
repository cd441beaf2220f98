"""The README's "Extending" examples are real: every ```python block of that section runs here, and each
entry it registers (a token method, an importance criterion, a backend) is then used end to end."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from .conftest import ROOT


def _blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Extending", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.fixture
def registered():
    """The examples register into the process-wide registries; remove them afterwards so that later tests (the
    family matrix validates with every registered backend) see the built-in entries only."""
    from otcompress.channels.importance import IMPORTANCE
    from otcompress.exporters import BACKENDS
    from otcompress.tokens.merge import METHODS

    yield
    for reg, name in ((METHODS, "keynorm"), (IMPORTANCE, "linf"), (BACKENDS, "onnxruntime-unoptimised")):
        reg.unregister(name)
    assert "onnxruntime-unoptimised" not in BACKENDS


def test_the_readme_examples_register_a_method_a_criterion_and_a_backend(tmp_path, registered):
    blocks = _blocks()
    assert len(blocks) >= 3
    for code in blocks:
        exec(compile(code, "README.md:Extending", "exec"), {"__name__": "readme_extending"})

    from otcompress.channels.importance import IMPORTANCE
    from otcompress.exporters import BACKENDS
    from otcompress.tokens.merge import METHODS

    assert "keynorm" in METHODS and "linf" in IMPORTANCE and "onnxruntime-unoptimised" in BACKENDS

    # the token method: reduces, exports and validates (decisions replayed) like the built-in ones
    from otcompress.exporters.onnx import OrtRunner, export_onnx
    from otcompress.exporters.pytorch import TorchRunner
    from otcompress.models import build_model
    from otcompress.tokens.patch import apply_token_reduction
    from otcompress.validation import Gate, validate

    torch.manual_seed(0)
    vit = build_model("vit", dict(img_size=16, patch_size=4, embed_dim=48, depth=3, num_heads=3, num_classes=7))
    plan = apply_token_reduction(vit, {"method": "keynorm", "keep": 0.75})
    assert plan["tokens_after_block"] == [13, 10, 8]
    export_onnx(vit, torch.zeros(1, 3, 16, 16), tmp_path / "v.onnx")
    x = np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)
    res = validate(TorchRunner(vit, input_shape=[1, 3, 16, 16]),
                   [OrtRunner(tmp_path / "v.onnx"), BACKENDS["onnxruntime-unoptimised"].open(tmp_path / "v.onnx")], x, Gate())
    assert res["passed"] and [c["check"] for c in res["checks"] if c["check"].startswith("export:")] == [
        "export:onnxruntime", "export:onnxruntime-unoptimised"]

    # the importance criterion: a recipe can name it
    from otcompress.channels.shrink import shrink_channels

    cnn = build_model("cifar_resnet20")
    rep = shrink_channels(cnn, torch.zeros(1, 3, 32, 32), "prune", importance="linf", sparsity=0.5, progress=False)
    assert all(r["after"] == r["before"] // 2 for r in rep)
