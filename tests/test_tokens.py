"""Token reduction: identity at keep = 1, exact merging of duplicate tokens with proportional attention,
static planned counts, and an exported graph that TensorRT would accept."""

import numpy as np
import onnx
import pytest
import torch

from otcompress.exporters.onnx import export_onnx
from otcompress.exporters.onnxruntime import OrtRunner
from otcompress.tokens import merge as M
from otcompress.tokens.patch import apply_token_reduction
from otcompress.models import build_model

from .conftest import shared

METHODS = ["tome", "pitome", "otprune"]
SMALL = dict(img_size=16, patch_size=4, embed_dim=48, depth=4, num_heads=3, num_classes=7)


def small_vit(seed=0):
    torch.manual_seed(seed)
    return build_model("vit", SMALL)


def test_ranks_break_exact_ties_by_index_like_a_stable_sort():
    """Identical tokens (flat image regions) tie exactly; ranks must order them by index, as a stable
    descending sort does, so that PyTorch and the exported graph take the same decisions."""
    v = torch.randint(0, 4, (3, 40)).float()
    want = torch.argsort(torch.argsort(v, dim=-1, descending=True, stable=True), dim=-1, stable=True)
    assert torch.equal(M.ranks_desc(v), want)
    u = torch.randn(2, 33)
    assert torch.equal(M.ranks_desc(u), torch.argsort(torch.argsort(u, dim=-1, descending=True), dim=-1))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("cfg", [{"keep": 1.0}, {"r": 0}])
def test_no_reduction_leaves_outputs_unchanged(method, cfg):
    model = small_vit()
    x = torch.randn(3, 3, 16, 16)
    ref = model(x).detach()
    plan = apply_token_reduction(model, {"method": method, **cfg})
    assert plan["removed_per_block"] == [0, 0, 0, 0]
    assert torch.allclose(model(x).detach(), ref, atol=1e-6)


def _blocks_out(model, tokens):
    return model.norm(model.blocks(tokens))[:, 0]


@pytest.mark.parametrize("method", ["tome", "pitome"])
def test_duplicate_tokens_merge_exactly_with_proportional_attention(method):
    model = small_vit()
    torch.manual_seed(1)
    uniq = torch.randn(2, 8, 48)
    tokens = torch.cat([torch.randn(2, 1, 48), uniq.repeat_interleave(2, dim=1)], dim=1)  # cls + 8 pairs
    ref = _blocks_out(model, tokens).detach()
    model.patch_embed.num_patches = 16
    apply_token_reduction(model, {"method": method, "r": 8, "blocks": [0]})
    out = _blocks_out(model, tokens).detach()
    assert (out - ref).abs().max() < 1e-5
    # without proportional attention a merged token of size 2 attends like one copy: the output changes
    apply_token_reduction(model, {"method": method, "r": 8, "blocks": [0], "prop_attn": False})
    assert (_blocks_out(model, tokens).detach() - ref).abs().max() > 1e-3


@pytest.mark.parametrize("method", METHODS)
def test_token_counts_follow_the_plan(method):
    model = small_vit()
    plan = apply_token_reduction(model, {"method": method, "keep": 0.75})
    seen = []
    hooks = [b.register_forward_hook(lambda m, i, o: seen.append((o[0] if isinstance(o, tuple) else o).shape[1]))
             for b in model.blocks]
    model(torch.randn(2, 3, 16, 16))
    for h in hooks:
        h.remove()
    assert seen == plan["tokens_after_block"] == [13, 10, 8, 6]
    assert plan["removed_per_block"] == [4, 3, 2, 2]


def test_r_is_constant_and_capped_at_half():
    plan = apply_token_reduction(small_vit(), {"method": "tome", "r": 6})
    assert plan["removed_per_block"] == [6, 5, 2, 1]  # 16 -> 10 -> 5 -> 3 -> 2: at most half each time


def test_pitome_energy_matches_the_paper_formula():
    torch.manual_seed(0)
    k = torch.randn(1, 6, 5)
    e, sim = M.energy(k, margin=0.3, alpha=1.0)
    kn = torch.nn.functional.normalize(k[0], dim=-1)
    c = kn @ kn.T
    want = torch.where(c >= 0.3, c, torch.exp(c - 0.3) - 1).mean(1)
    assert torch.allclose(e[0], want, atol=1e-6)


def _pitome_by_hand(metric, r, c):
    """PiToMe's plan written as loops over sorted lists: A/B alternate along the energy order among the c
    highest-energy tokens, the r A tokens with the best edges merge into their best B, the rest keep a slot."""
    n = metric.shape[1]
    e, sim = M.energy(metric, 0.9, 1.0, "elu")
    out = []
    for b in range(metric.shape[0]):
        order = sorted(range(n), key=lambda i: (-e[b, i].item(), i))
        a_set, b_set = order[:c:2], order[1:c:2]
        best = {i: max(b_set, key=lambda j: (sim[b, i, j].item(), -j)) for i in a_set}
        merged = sorted(a_set, key=lambda i: (-sim[b, i, best[i]].item(), i))[:r]
        kept = [i for i in order if i not in merged and i not in b_set]
        slot = {i: s for s, i in enumerate(kept + b_set)}
        out.append([slot[best[i]] if i in merged else slot[i] for i in range(n)])
    return torch.tensor(out)


@pytest.mark.parametrize("mergeable,r", [(1.0, 3), (1.0, 7), (2.0, 3), (10.0, 5)])
def test_pitome_plan_equals_the_rule_written_by_hand(mergeable, r):
    """mergeable 1 is the paper (every A token of the 2r highest-energy ones merges); more candidates let the
    r merges take the best edges, as ToMe does."""
    torch.manual_seed(1)
    metric = torch.randn(2, 16, 6)
    c = min(16, max(2 * r, round(mergeable * 2 * r)))
    got = M.pitome(metric, r, margin=0.9, alpha=1.0, form="elu", mergeable=mergeable)
    assert torch.equal(got, _pitome_by_hand(metric, r, c))
    assert all(sorted(set(row.tolist())) == list(range(16 - r)) for row in got)  # n - r slots, every one used


@pytest.mark.parametrize("k", [5, 9])  # 9 > d = 5: past the feature dimension the kernel's identity part decides
def test_otprune_greedy_equals_brute_force_logdet_greedy(k):
    torch.manual_seed(0)
    v = torch.randn(2, 12, 5, dtype=torch.float64)
    got = M.logdet_select(v, k, gamma=0.5)
    assert torch.equal(got, M.logdet_select(v.float(), k, gamma=0.5))  # float32 takes the same choices here
    for b in range(2):
        vn = torch.nn.functional.normalize(v[b], dim=0)
        s = vn @ vn.T
        K = torch.eye(12, dtype=torch.float64) + 0.5 * s @ s.T
        chosen = []
        for _ in range(k):
            best = max((j for j in range(12) if j not in chosen),
                       key=lambda j: torch.logdet(K[[*chosen, j]][:, [*chosen, j]]).item())
            chosen.append(best)
        assert sorted(chosen) == torch.nonzero(got[b]).flatten().tolist()


@pytest.mark.parametrize("method,mode", [("tome", "drop"), ("pitome", "drop"), ("otprune", "merge")])
def test_class_token_is_never_merged(method, mode):
    """A class token identical to every patch token is everyone's best match; it must still pass untouched."""
    from otcompress.tokens.patch import reduce_tokens

    torch.manual_seed(0)
    x = torch.randn(2, 1 + 12, 8)
    metric = torch.randn(2, 13, 4)
    metric[:, 0] = metric[:, 1:].mean(1)  # the most similar token to all others
    out, size = reduce_tokens(x, metric, None, prefix=1, r=5, cfg={"method": method, "mode": mode}, layer=0, depth=4)
    assert out.shape == (2, 8, 8)
    assert torch.equal(out[:, 0], x[:, 0]) and torch.equal(size[:, 0], torch.ones(2, 1))
    assert torch.allclose(size[:, 1:].sum(1), torch.full((2, 1), 12.0 if mode == "merge" or method != "otprune" else 7.0))


def _graphs(g):
    """The graph and every subgraph (Scan/Loop/If bodies), depth first."""
    yield g
    for n in g.node:
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                yield from _graphs(sub)


def walk_for_trt(path):
    """Constructs TensorRT refuses: ScatterND with a reduction, TopK with a non-constant or >= 3840 K,
    data-dependent ops and shapes, in the graph and in every subgraph. A Scan (constant trip count, static
    shapes: OTPrune's greedy loop) is allowed; a Loop or If is not. (scatter_reduce(mean) exports silently
    as a plain scatter, so no graph walk can see it; the merge avoids scatters altogether.)"""
    top = onnx.shape_inference.infer_shapes(onnx.load(path), strict_mode=True).graph
    problems = []
    for g in _graphs(top):
        consts = {i.name: onnx.numpy_helper.to_array(i) for i in g.initializer}
        for n in g.node:
            if n.op_type == "Constant":
                consts[n.output[0]] = onnx.numpy_helper.to_array(n.attribute[0].t)
        for n in g.node:
            red = next((a.s for a in n.attribute if a.name == "reduction"), b"none")
            if n.op_type == "ScatterND" and red != b"none":
                problems.append(f"ScatterND with reduction {red.decode()}")
            if n.op_type in ("Loop", "If", "NonZero", "Unique"):
                problems.append(f"data-dependent op {n.op_type}")
            if n.op_type == "TopK":
                k = consts.get(n.input[1])
                if k is None or int(np.asarray(k).reshape(-1)[0]) >= 3840:
                    problems.append(f"TopK with non-constant or too large K ({k})")
        for v in list(g.value_info) + list(g.output):
            if any(d.dim_param or not d.HasField("dim_value") for d in v.type.tensor_type.shape.dim):
                problems.append(f"non-static shape on {v.name}")
    return problems


@pytest.mark.parametrize("method,mode", [("tome", "drop"), ("pitome", "drop"), ("otprune", "drop"), ("otprune", "merge")])
def test_reduced_vit_exports_matches_and_is_trt_friendly(method, mode, tmp_path):
    model = small_vit(3)
    apply_token_reduction(model, {"method": method, "keep": 0.75, "mode": mode})
    x = torch.randn(8, 3, 16, 16)
    export_onnx(model, x[:1], tmp_path / "m.onnx", opset=18)
    out = OrtRunner(tmp_path / "m.onnx").infer_batched(x.numpy())["logits"]
    with torch.no_grad():
        ref = model(x).numpy()
    assert np.abs(out - ref).max() <= 1e-4
    assert walk_for_trt(tmp_path / "m.onnx") == []
    if method == "otprune":  # the greedy loop is one Scan per reducing block, not k unrolled steps
        assert [n.op_type for n in onnx.load(tmp_path / "m.onnx").graph.node].count("Scan") == 4


@pytest.mark.parametrize("method", METHODS)
def test_reduced_vit_compiles_as_one_graph(method):
    """torch.compile(fullgraph=True) must trace every method without a graph break (GPU throughput relies
    on compiling the merge's small ops together); OTPrune's greedy loop traces as one scan, with gradients
    on (the choice itself is detached)."""
    torch._dynamo.reset()
    model = small_vit(5)
    apply_token_reduction(model, {"method": method, "keep": 0.75})
    x = torch.randn(4, 3, 16, 16)
    ref = model(x)
    graphs = []
    out = torch.compile(model, fullgraph=True, backend=lambda gm, _: graphs.append(gm) or gm.forward)(x)
    assert torch.allclose(out, ref, atol=1e-5) and len(graphs) == 1
    scans = [n for n in graphs[0].graph.nodes if n.target is torch.ops.higher_order.scan]
    assert len(scans) == (4 if method == "otprune" else 0)  # one per reducing block, not k unrolled steps
    out.sum().backward()
    assert model.head.weight.grad is not None


def test_the_graph_walk_catches_what_tensorrt_refuses(tmp_path):
    from onnx import TensorProto, helper

    f = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)  # noqa: E731
    nodes = [
        helper.make_node("ScatterND", ["x", "idx", "upd"], ["s"], reduction="add"),
        helper.make_node("TopK", ["s", "k"], ["vals", "inds"], axis=1),
        helper.make_node("NonZero", ["s"], ["nz"]),
    ]
    graph = helper.make_graph(
        nodes, "bad", [f("x", [2, 4]), helper.make_tensor_value_info("k", TensorProto.INT64, [1]), f("upd", [1, 4])],
        [f("vals", None), helper.make_tensor_value_info("nz", TensorProto.INT64, None)],
        initializer=[onnx.numpy_helper.from_array(np.array([[0]], dtype=np.int64), "idx")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "bad.onnx")
    problems = " | ".join(walk_for_trt(tmp_path / "bad.onnx"))
    for frag in ("ScatterND with reduction add", "TopK with non-constant", "data-dependent op NonZero", "non-static shape"):
        assert frag in problems, problems


def test_an_attention_mask_is_refused_with_a_clear_error():
    from otcompress.errors import OTCError

    model = small_vit()
    plan = apply_token_reduction(model, {"method": "tome", "keep": 0.75})
    tokens = torch.randn(2, 17, 48)
    with pytest.raises(OTCError, match="block 0: a token-reduced ViT cannot take an attention mask"):
        model.blocks[0](tokens, attn_mask=torch.zeros(2, 1, 17, 17))
    assert model.blocks[0](tokens)[0].shape == (2, plan["tokens_after_block"][0], 48)


def test_real_vit_tiny_checkpoint_loads_strictly_and_reduces():
    from otcompress.models.checkpoint import load_weights, read_state_dict

    path = shared("models/vit_tiny_p2.safetensors")
    model = build_model("vit", dict(img_size=32, patch_size=2, embed_dim=192, depth=12, num_heads=3, num_classes=10))
    load_weights(model, read_state_dict(path), str(path))
    plan = apply_token_reduction(model, {"method": "pitome", "keep": 0.9})
    assert plan["tokens_in"] == 257 and plan["tokens_after_block"][-1] < 100


def test_timm_models_are_patched_like_tome():
    timm = pytest.importorskip("timm", reason="timm is an optional extra; it does not load with CPU torch here "
                                              "(run on the GPU machine, see README)")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10).eval()
    x = torch.randn(2, 3, 224, 224)
    ref = model(x).detach()
    apply_token_reduction(model, {"method": "tome", "keep": 1.0})
    assert torch.allclose(model(x).detach(), ref, atol=1e-5)
    plan = apply_token_reduction(model, {"method": "tome", "r": 13})
    assert model(x).shape == (2, 10) and plan["tokens_after_block"][-1] == 197 - 13 * 12


def test_flop_count_includes_fused_attention():
    """The built-in ViT runs attention through SDPA; its FLOPs must still count the two attention matmuls
    (the fused CPU kernel has no FLOP formula), or every token speedup/FLOP ratio would be off."""
    from otcompress.metrics import count_flops

    cfg = dict(img_size=16, patch_size=4, embed_dim=24, depth=2, num_heads=3, num_classes=5)
    m = build_model("vit", cfg)
    P, C, N = 16, 24, 17
    block = 2 * N * C * 3 * C + 2 * 2 * N * N * C + 2 * N * C * C + 2 * 2 * N * C * 4 * C
    want = 2 * P * C * 3 * 4 * 4 + 2 * block + 2 * C * 5
    assert count_flops(m, (1, 3, 16, 16)) == want


def test_tokens_with_an_empty_block_list_reduces_no_block():
    from otcompress.tokens.patch import apply_token_reduction

    model = build_model("vit", dict(img_size=16, patch_size=4, embed_dim=24, depth=3, num_heads=3, num_classes=5))
    x = torch.randn(2, 3, 16, 16)
    ref = model(x).detach()
    plan = apply_token_reduction(model, {"method": "tome", "keep": 0.75, "blocks": []})
    assert plan["removed_per_block"] == [0, 0, 0] and torch.allclose(model(x).detach(), ref, atol=1e-6)
