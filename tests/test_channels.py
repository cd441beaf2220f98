"""Channel groups, pruning and Intra-Fusion: equivalence tests that pin the math."""

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from otcompress.errors import OTCError
from otcompress.exporters.onnx import export_onnx
from otcompress.exporters.onnxruntime import OrtRunner
from otcompress.channels.fold_bn import fold_batchnorm
from otcompress.channels.groups import GroupGraph
from otcompress.channels.fusion import fusion_maps, transport_plan
from otcompress.channels.shrink import shrink_channels
from otcompress.models import build_model

from .conftest import CNN_ZOO, randomize_bn


# ---------- nets built from exact duplicate neurons (channel i+m copies channel i) ----------

def _dup_rows(w, m):  # output channels: second half copies the first
    w[m:] = w[:m]


def _dup_cols(w, m):  # input channels of a consumer: copies get identical columns
    w[:, m:] = w[:, :m]


class Residual(nn.Module):
    def __init__(self, m=6):
        super().__init__()
        n = 2 * m
        self.stem = nn.Conv2d(3, n, 3, padding=1)
        self.body = nn.Conv2d(n, n, 3, padding=1)
        self.head = nn.Conv2d(n, 5, 1)
        with torch.no_grad():
            for conv in (self.stem, self.body):
                _dup_rows(conv.weight, m)
                _dup_rows(conv.bias, m)
            _dup_cols(self.body.weight, m)
            _dup_cols(self.head.weight, m)

    def forward(self, x):
        h = F.relu(self.stem(x))
        h = F.relu(h + self.body(h))
        return self.head(h).mean((2, 3))


class Depthwise(nn.Module):
    def __init__(self, m=6):
        super().__init__()
        n = 2 * m
        self.expand = nn.Conv2d(3, n, 1)
        self.dw = nn.Conv2d(n, n, 3, padding=1, groups=n)
        self.project = nn.Conv2d(n, 5, 1)
        with torch.no_grad():
            for t in (self.expand.weight, self.expand.bias, self.dw.weight, self.dw.bias):
                _dup_rows(t, m)
            _dup_cols(self.project.weight, m)

    def forward(self, x):
        return self.project(F.relu(self.dw(F.relu(self.expand(x))))).mean((2, 3))


@pytest.mark.parametrize("net", [Residual, Depthwise])
def test_fusing_exact_duplicates_preserves_the_function(net):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    results = {}
    for method, fusion in (("intrafusion", "exact"), ("intrafusion", "reference"), ("prune", "exact")):
        torch.manual_seed(1)
        model = net().eval()
        with torch.no_grad():
            ref = model(x)
        kw = {"fusion": fusion} if method == "intrafusion" else {}
        rep = shrink_channels(model, x[:1], method, sparsity=0.5, progress=False, **kw)
        assert [r["after"] for r in rep if r["before"] == 12] == [6]
        with torch.no_grad():
            results[(method, fusion)] = (model(x) - ref).abs().max().item() / ref.abs().max().item()
    assert results[("intrafusion", "exact")] <= 1e-5
    assert results[("prune", "exact")] > 1e-2  # dropping loses the duplicates' contribution
    assert results[("intrafusion", "reference")] > 1e-2  # the reference sums producers (n/m too large)


def test_reference_fusion_doubles_preactivation_on_duplicates():
    torch.manual_seed(0)
    lin1, lin2 = nn.Linear(4, 8), nn.Linear(8, 3, bias=False)
    with torch.no_grad():
        _dup_rows(lin1.weight, 4), _dup_rows(lin1.bias, 4), _dup_cols(lin2.weight, 4)
    model = nn.Sequential(lin1, nn.Identity(), lin2).eval()  # linear: pre-activation passes straight through
    x = torch.randn(5, 4)
    ref = model(x).detach()
    shrink_channels(model, x[:1], "intrafusion", sparsity=0.5, fusion="reference", progress=False)
    assert torch.allclose(model(x).detach(), 2.0 * ref, atol=1e-5)


def test_m_equals_n_is_the_identity():
    torch.manual_seed(0)
    feats, imp = torch.randn(10, 7), torch.rand(10)
    P, slots = transport_plan(feats, imp, 10)
    for fusion in ("exact", "merge"):  # the function-preserving fusion and the default
        t_out, t_in = fusion_maps(P, fusion, slots, torch.rand(10, dtype=torch.float64) + 0.5)
        assert torch.allclose(t_out, torch.eye(10, dtype=t_out.dtype)) and torch.allclose(t_in, torch.eye(10, dtype=t_in.dtype))
    model = randomize_bn(build_model("cifar_resnet20"))
    x = torch.randn(2, 3, 32, 32)
    ref = model(x).detach()
    rep = shrink_channels(model, x[:1], "intrafusion", sparsity=0.0, progress=False)
    assert all(r["before"] == r["after"] for r in rep)
    assert torch.equal(model(x).detach(), ref)


def test_fusion_maps_marginals():
    P = torch.rand(9, 4, dtype=torch.float64)
    t_out, t_in = fusion_maps(P, "exact")
    assert torch.allclose(t_out.sum(1), torch.ones(4, dtype=torch.float64))  # producers: averages
    assert torch.allclose((t_in * P.sum(1)).sum(1), P.sum(0))  # consumers: a-weighted sums


def _expected(n, p):
    return max(1, round(n * (1 - p)))


@pytest.mark.parametrize("sparsity", [0.3, 0.7])
@pytest.mark.parametrize("arch,args,shape", CNN_ZOO, ids=[c[0] for c in CNN_ZOO])
def test_zoo_cnns_pruned_have_exact_counts_and_export(arch, args, shape, sparsity, tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(build_model(arch, args))
    x = torch.randn(2, *shape[1:])
    fold_batchnorm(model, x[:1])
    method = "intrafusion" if sparsity == 0.3 else "prune"
    rep = shrink_channels(model, x[:1], method, sparsity=sparsity, progress=False)
    assert rep
    for r in rep:
        assert r["after"] == _expected(r["before"], sparsity), r
        root = model.get_submodule(r["group"])
        assert getattr(root, "out_channels", getattr(root, "out_features", None)) == r["after"]
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, model(x).shape[1]) and torch.isfinite(out).all()
    export_onnx(model, x[:1], tmp_path / "m.onnx")
    ort = OrtRunner(tmp_path / "m.onnx").infer_batched(x.numpy())["logits"]
    assert np.abs(ort - out.numpy()).max() <= 1e-4 * max(1.0, np.abs(out.numpy()).max())


def test_option_a_resnets_prune_only_block_internal_channels():
    """The default for option-A ResNets is block-internal channels (the literature's convention). With
    scope = "all" the zero-padded shortcuts are followed exactly: the padded positions of stages 2 and 3 are
    always kept, the stage-1 channels they carry shrink everywhere at once, and the net still runs (where
    Torch-Pruning couples the wrong channels)."""
    model = build_model("cifar_resnet56")
    graph = GroupGraph(model, torch.zeros(1, 3, 32, 32))
    groups = graph.groups()
    assert len(groups) == 27 and all(g.producers == [g.root] and g.root.endswith("conv1") for g in groups)
    model = randomize_bn(build_model("cifar_resnet20"))
    trunk = [g for g in GroupGraph(model, torch.zeros(1, 3, 32, 32), scope="all").groups() if not g.internal]
    assert len(trunk) == 1 and trunk[0].n == 64 and int(trunk[0].forced.sum()) == 48  # 16 stage-1 channels free
    x = torch.randn(2, 3, 32, 32)
    rep = shrink_channels(model, x[:1], "prune", sparsity=0.25, scope="all", progress=False)
    assert model.conv1.out_channels == 12 and model.layer2[0].conv2.out_channels == 28
    assert model.layer3[2].conv2.out_channels == 60 and model.linear.in_features == 60
    assert {r["after"] for r in rep if r["group"] == trunk[0].root} == {60} and model(x).shape == (2, 10)


def test_classifier_outputs_never_pruned_and_exclude_patterns():
    model = randomize_bn(build_model("cifar_vgg11_bn", {"width": 16}))
    rep = shrink_channels(model, torch.zeros(1, 3, 32, 32), "prune", sparsity=0.5, exclude=["features.0"],
                          progress=False)
    assert model.classifier.out_features == 10
    assert model.features[0].out_channels == 16 and "features.0" not in [r["group"] for r in rep if r["after"] < r["before"]]


def test_sparsity_forms_list_patterns_round_to():
    model = randomize_bn(build_model("cifar_resnet20"))
    rep = shrink_channels(model, torch.zeros(1, 3, 32, 32), "prune", sparsity=[0, 0.5, 0.25, 0.75], progress=False)
    by = {r["group"]: r["after"] for r in rep}
    assert by["layer1.0.conv1"] == 8 and by["layer2.0.conv1"] == 24 and by["layer3.0.conv1"] == 16
    model = randomize_bn(build_model("cifar_resnet18", {"width": 32}))
    rep = shrink_channels(model, torch.zeros(1, 3, 32, 32), "prune", sparsity={"layer4.*": 0.3, "*": 0.1},
                          round_to=8, progress=False)
    for r in rep:
        assert r["after"] % 8 == 0 and r["after"] >= 8
    l4 = [r for r in rep if r["group"].startswith("layer4") and r["before"] == 256]
    assert l4 and all(r["after"] == 176 for r in l4)  # round(256*0.7)=179 -> 176
    with pytest.raises(OTCError, match="stage"):
        shrink_channels(build_model("cifar_resnet20"), torch.zeros(1, 3, 32, 32), "prune", sparsity=[0, 0.5],
                        progress=False)


@pytest.mark.parametrize("importance", ["l2", "bn_scale", "taylor", "reconstruction"])
def test_importance_kinds(importance):
    model = randomize_bn(build_model("cifar_resnet20"))
    x = torch.randn(8, 3, 32, 32)
    rep = shrink_channels(model, x[:1], "prune", sparsity=0.5, importance=importance,
                          data=(x, torch.randint(0, 10, (8,))), progress=False)
    assert all(r["after"] == _expected(r["before"], 0.5) for r in rep)


def test_reconstruction_drops_the_channel_the_others_rebuild():
    """importance = "reconstruction" cuts a channel its group can rebuild (here a scaled copy of a kept one, and
    the two largest channels, which l1 keeps both), so a least-squares refit of the consumer recovers the
    output exactly; l1 cuts the smallest channel instead, which nothing rebuilds (the wrong-on-purpose case)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1)).eval()
    with torch.no_grad():
        model[0].weight[0] *= 2.0
        model[0].weight[2], model[0].bias[2] = 3.0 * model[0].weight[0], 3.0 * model[0].bias[0]  # relu: a copy x3
        model[0].weight[5] *= 0.05  # the smallest: l1 drops it
        model[2].weight *= 3.0
    x = torch.randn(16, 3, 8, 8)
    inputs = model[1](model[0](x))
    cut = {}
    for imp in ("reconstruction", "l1"):
        m = copy.deepcopy(model)
        rep = shrink_channels(m, x[:1], "prune", sparsity=1 / 6, importance=imp, data=(x, None), progress=False)
        cut[imp] = sorted(set(range(6)) - set(rep.chosen["0"].tolist()))
    assert cut["reconstruction"][0] in (0, 2) and cut["l1"] == [5], cut
    for imp, want_exact in (("reconstruction", True), ("l1", False)):  # the refit from the kept inputs
        kept = [c for c in range(6) if c not in cut[imp]]
        cols = F.unfold(inputs, 3, padding=1).reshape(16, 6, 9, 64)
        a = cols[:, kept].permute(0, 3, 1, 2).reshape(16 * 64, -1).double()
        b = model[2](inputs).permute(0, 2, 3, 1).reshape(16 * 64, 4).double() - model[2].bias.double()
        res = (a @ torch.linalg.lstsq(a, b).solution - b).norm() / b.norm()
        assert (res < 1e-6) == want_exact, (imp, float(res))


def test_bn_scale_after_folding_is_a_clear_error():
    model = randomize_bn(build_model("cifar_resnet20"))
    fold_batchnorm(model, torch.zeros(1, 3, 32, 32))
    with pytest.raises(OTCError, match="bn_scale"):
        shrink_channels(model, torch.zeros(1, 3, 32, 32), "prune", sparsity=0.5, importance="bn_scale", progress=False)


@pytest.mark.parametrize("opts", [{"solver": "sinkhorn", "reg": 0.05}, {"targets": "centroids"}, {"marginals": "importance"}])
def test_intrafusion_options_keep_counts(opts):
    torch.manual_seed(0)
    model = randomize_bn(build_model("cifar_resnet20"))
    x = torch.randn(4, 3, 32, 32)
    fold_batchnorm(model, x[:1])
    rep = shrink_channels(model, x[:1], "intrafusion", sparsity=0.5, progress=False, **opts)
    assert all(r["after"] == 8 * (r["before"] // 16) for r in rep)
    assert torch.isfinite(model(x)).all()


def test_user_factory_model(tmp_path, monkeypatch):
    (tmp_path / "mynet.py").write_text(
        "import torch.nn as nn\n"
        "def build(width=8):\n"
        "    return nn.Sequential(nn.Conv2d(3, width, 3), nn.BatchNorm2d(width), nn.ReLU(),\n"
        "                         nn.Conv2d(width, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 4))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model("mynet:build", {"width": 12})
    rep = shrink_channels(model, torch.zeros(1, 3, 16, 16), "intrafusion", sparsity=0.5, progress=False)
    assert sorted(r["after"] for r in rep) == [6, 6]


def test_a_per_stage_list_on_a_net_without_layerN_stages_is_an_error():
    """Was: cifar_mobilenetv2 (stages named layers.*) took [0, .5, .5, .5] as all-zero and pruned nothing."""
    from otcompress.channels.shrink import shrink_channels

    with pytest.raises(OTCError, match="no layerN stages"):
        shrink_channels(build_model("cifar_mobilenetv2"), torch.zeros(1, 3, 32, 32), "prune",
                        sparsity=[0, 0.5, 0.5, 0.5], progress=False)
