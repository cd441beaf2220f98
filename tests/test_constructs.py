"""One equivalence test per construct the channel stages handle (grouped convs, GroupNorm, squeeze-
excitation, concat, split and shuffle, channels-last LayerNorm with layer scale, projection shortcuts,
PReLU, hard-swish/SiLU/GELU): m = n is the identity; where a group is made of exact copies, Intra-Fusion at
50% is exact and dropping is not; the shrunk net keeps the constraints (equal counts per chunk), exports
to ONNX with matching outputs and rebuilds from compressed.safetensors alone."""

import numpy as np
import pytest
import torch

from otcompress.channels.groups import GroupGraph
from otcompress.channels.shrink import shrink_channels
from otcompress.exporters.onnx import export_onnx
from otcompress.exporters.onnxruntime import OrtRunner
from otcompress.models import build_model
from otcompress.serialize import load_compressed, save_compressed

from . import constructs as C
from .conftest import randomize_bn

X = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def net(name, seed=0):
    torch.manual_seed(seed)
    return randomize_bn(build_model(f"tests.constructs:{name}"))


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("name", C.ALL)
def test_m_equals_n_is_the_identity(name):
    model = net(name)
    with torch.no_grad():
        ref = model(X)
    rep = shrink_channels(model, X[:1], "intrafusion", sparsity=0.0, progress=False)
    assert all(r["after"] == r["before"] for r in rep)
    with torch.no_grad():
        assert torch.equal(model(X), ref)


@pytest.mark.parametrize("name", [n for n in C.ALL if n not in ("groupnorm",)])
def test_duplicated_channels_fuse_exactly_and_dropping_does_not(name):
    """GroupNorm is left out: dropping half of a group's channels changes the group's statistics."""
    results = {}
    for method in ("intrafusion", "prune"):
        model = net(name)
        C.duplicate(model, X[:1])
        with torch.no_grad():
            ref = model(X)
        rep = shrink_channels(model, X[:1], method, sparsity=0.5, progress=False)
        assert any(r["after"] < r["before"] for r in rep)
        with torch.no_grad():
            results[method] = rel(model(X), ref)
    assert results["intrafusion"] <= 1e-5, results
    assert results["prune"] > 1e-3, results


@pytest.mark.parametrize("name", C.ALL)
def test_shrunk_construct_exports_and_rebuilds(name, tmp_path):
    model = net(name)
    rep = shrink_channels(model, X[:1], "intrafusion", sparsity=0.3, progress=False)
    with torch.no_grad():
        out = model(X).numpy()
    export_onnx(model, X[:1], tmp_path / "m.onnx")
    ort = OrtRunner(tmp_path / "m.onnx").infer_batched(X.numpy())["logits"]
    assert np.abs(ort - out).max() <= 1e-4 * max(1.0, np.abs(out).max())
    save_compressed(tmp_path / "c.safetensors", model, {"arch": f"tests.constructs:{name}", "args": {},
                                                          "input_shape": [1, 3, 8, 8]})
    again, _ = load_compressed(tmp_path / "c.safetensors")
    with torch.no_grad():
        assert torch.equal(again(X), torch.from_numpy(out))
    assert any(r["after"] < r["before"] for r in rep)


def test_grouped_conv_keeps_equal_counts_per_group_and_its_groups():
    model = net("grouped")
    graph = GroupGraph(model, X[:1])
    g = next(g for g in graph.groups() if g.root == "conv1")
    assert g.n_chunks == 4 and g.placement  # conv2 reads conv1's channels in 4 groups of 4
    shrink_channels(model, X[:1], "prune", sparsity=0.5, progress=False)
    assert model.conv2.groups == 4 and model.conv2.in_channels == 8 and model.conv2.weight.shape[1] == 2
    assert model.conv2.out_channels % 4 == 0 and model.bn2.num_features == model.conv2.out_channels


def test_groupnorm_prunes_the_same_count_in_every_group_and_rebuilds(tmp_path):
    """Was: 22 channels left under 4 groups (a crash in the next forward), and a reload that failed."""
    model = net("groupnorm")
    shrink_channels(model, X[:1], "prune", sparsity=0.3, progress=False)
    assert model.gn.num_groups == 4 and model.gn.num_channels == 12 == model.conv1.out_channels
    save_compressed(tmp_path / "c.safetensors", model, {"arch": "tests.constructs:groupnorm", "args": {},
                                                          "input_shape": [1, 3, 8, 8]})
    again, _ = load_compressed(tmp_path / "c.safetensors")
    with torch.no_grad():
        assert torch.equal(again(X), model(X))


def test_split_and_shuffle_are_left_whole_and_listed():
    """chunk(2) is a constraint (equal halves); the shuffle's grouped view splits two groups' channels into equal
    parts, which nothing keeps equal across groups, so both are kept whole and listed."""
    model = net("split_shuffle")
    stem = next(g for g in GroupGraph(model, X[:1]).groups() if g.root == "stem")
    assert stem.n_chunks == 2 and int(stem.forced[:8].sum()) == 8  # the half the shuffle reads is kept
    rep = shrink_channels(model, X[:1], "prune", sparsity=0.5, progress=False)
    assert [r["group"] for r in rep if r["after"] < r["before"]] == ["b1", "head"]  # not what chunk/shuffle touch
    reasons = " | ".join(f["reason"] for f in rep.left_whole)
    assert "channel shuffle" in reasons and "model output" in reasons
    assert model.stem.out_channels == 16 and model.b2.out_channels == 8 and model(X).shape == (4, 5)


def test_layer_scale_and_layernorm_follow_the_channels():
    model = net("channels_last")
    shrink_channels(model, X[:1], "prune", sparsity=0.5, progress=False)
    n = model.stem.out_channels
    assert n == 6 and model.gamma.shape == (6,) and model.norm.normalized_shape == (6,) and model.dw.groups == 6
    assert model.pw1.out_features == 12 and model.pw2.in_features == 12 and model.fc.in_features == 6


def test_prelu_slopes_follow_the_channels():
    model = net("projection")
    shrink_channels(model, X[:1], "prune", sparsity=0.5, progress=False)
    assert model.act.num_parameters == model.act.weight.shape[0] == model.conv2.out_channels == model.short.out_channels == 6


def test_a_size_read_from_another_tensor_is_found_by_the_trial_and_left_whole():
    """The graph shows `reshape(b, c, h, w)` with constants: shrinking the stem breaks the forward (v's channels
    are mixed with positions, which the graph shows). The trial shrink finds the stem, leaves it whole with the
    error, and the rest shrinks and runs."""
    model = net("size_from_input")
    graph = GroupGraph(model, X[:1])
    whole = {f.root: f.reason for f in graph.frozen}
    assert "reads its size elsewhere" in whole["stem"] and "shape" in whole["stem"] and "v" in whole, whole
    rep = shrink_channels(model, X[:1], "prune", sparsity=0.5, progress=False)
    assert [r["group"] for r in rep if r["after"] < r["before"]] == ["head"]
    with torch.no_grad():
        assert model(X).shape == (4, 5)


def test_a_weight_standardized_conv_shrinks_as_its_parameter():
    """timm's StdConv2d convolves with a weight computed from its parameter (reshape, batch_norm, reshape_as): the
    parameter's channels are the weight's, so it is a producer like any conv (was: no group at all)."""
    from timm.layers import StdConv2d

    torch.manual_seed(0)
    model = torch.nn.Sequential(StdConv2d(3, 8, 3, padding=1), torch.nn.ReLU(), StdConv2d(8, 6, 1),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 5)).eval()
    assert [g.root for g in GroupGraph(model, X[:1]).groups()] == ["0", "2"]
    shrink_channels(model, X[:1], "prune", sparsity=0.5, progress=False)
    assert model[0].weight.shape == (4, 3, 3, 3) and model[2].weight.shape == (3, 4, 1, 1)
    with torch.no_grad():
        assert model(X).shape == (4, 5)
