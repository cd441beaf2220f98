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
    """The examples register into the process-wide registries; whatever they add is removed afterwards, so
    later tests (the family matrix validates with every registered backend) see the built-in entries only."""
    from otcompress.channels.importance import IMPORTANCE
    from otcompress.channels.ops import OPS
    from otcompress.exporters import BACKENDS
    from otcompress.tokens.merge import METHODS

    registries = (METHODS, IMPORTANCE, BACKENDS, OPS)
    before = [set(r) for r in registries]
    yield
    for reg, names in zip(registries, before):
        for name in set(reg) - names:
            reg.unregister(name)
    assert [set(r) for r in registries] == before


class Sinh(torch.nn.Module):
    """conv -> sinh -> conv: only an analysis that follows sinh can shrink the first conv's channels."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(torch.sinh(self.a(x))).mean((2, 3))


def test_the_readme_examples_register_a_method_a_criterion_a_backend_and_an_op_handler(tmp_path, registered):
    from otcompress.channels.groups import GroupGraph

    x = torch.randn(2, 3, 8, 8)
    before = GroupGraph(Sinh(), x[:1])
    assert not any(g.root == "a" for g in before.groups())  # unknown op: frozen, with the reason
    assert any("not analysed: sinh" in f.reason for f in before.frozen)
    blocks = _blocks()
    assert len(blocks) >= 4
    for code in blocks:
        exec(compile(code, "README.md:Extending", "exec"), {"__name__": "readme_extending"})

    from otcompress.channels.importance import IMPORTANCE
    from otcompress.exporters import BACKENDS
    from otcompress.tokens.merge import METHODS

    assert "keynorm" in METHODS and "linf" in IMPORTANCE and "onnxruntime-unoptimised" in BACKENDS

    # the op handler: the first conv's channels now shrink, and the shrunk net computes what the rows it keeps do
    from otcompress.channels.shrink import shrink_channels

    net = Sinh().eval()
    assert any(g.root == "a" for g in GroupGraph(net, x[:1]).groups())
    rep = shrink_channels(net, x[:1], "prune", sparsity=0.5, progress=False)
    assert net.a.out_channels == 4 and net.b.in_channels == 4 and net(x).shape == (2, 4)
    assert any(r["group"] == "a" and r["after"] == 4 for r in rep)

    # the token method: reduces, exports and validates (decisions replayed) like the built-in ones
    from otcompress.exporters.onnx import export_onnx
    from otcompress.exporters.onnxruntime import OrtRunner
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
                   [OrtRunner(tmp_path / "v.onnx"), BACKENDS["onnxruntime-unoptimised"].open(tmp_path / "v.onnx")], x, Gate()).as_dict()
    assert res["passed"] and [c["check"] for c in res["checks"] if c["check"].startswith("export:")] == [
        "export:onnxruntime", "export:onnxruntime-unoptimised"]

    # the importance criterion: a recipe can name it
    from otcompress.channels.shrink import shrink_channels

    cnn = build_model("cifar_resnet20")
    rep = shrink_channels(cnn, torch.zeros(1, 3, 32, 32), "prune", importance="linf", sparsity=0.5, progress=False)
    assert all(r["after"] == r["before"] // 2 for r in rep)


def test_registries_resolve_a_plugins_subclass_rule_before_its_bases():
    """A plugin's rule for a subclass wins over the built-in rule for its base, whatever the registration order:
    layer-resize rules (a class registry) and token adapters (the most specific declared class)."""
    from otcompress.channels.groups import RESIZE, resize

    class WideConv(torch.nn.Conv2d):
        pass

    seen = []
    RESIZE.register(WideConv, lambda m, role, n: seen.append((role, n)))
    try:
        conv = WideConv(3, 8, 1)
        resize(conv, "out", 4)
        assert seen == [("out", 4)] and conv.out_channels == 8  # the plugin's rule ran, not the Conv2d one
        plain = torch.nn.Conv2d(3, 8, 1)
        resize(plain, "out", 4)
        assert plain.out_channels == 4 and seen == [("out", 4)]
    finally:
        RESIZE.unregister(WideConv)

    from otcompress.models.zoo.vit import VisionTransformer
    from otcompress.tokens.adapters import ADAPTERS, find_adapter
    from otcompress.tokens.adapters.timm import TimmViT

    class MyViT(VisionTransformer):
        pass

    class MyAdapter(TimmViT):
        name = "my-vit"

        def classes(self):
            return (MyViT,)

    ADAPTERS.register("my-vit", MyAdapter())
    try:
        kw = dict(img_size=16, patch_size=4, embed_dim=24, depth=1, num_heads=3, num_classes=5)
        assert find_adapter(MyViT(**kw)).name == "my-vit"
        assert find_adapter(VisionTransformer(**kw)).name == "timm-vit"
    finally:
        ADAPTERS.unregister("my-vit")
    assert find_adapter(MyViT(**kw)).name == "timm-vit"
