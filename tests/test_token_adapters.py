"""Token adapters: every supported family is the identity at keep = 1 (gated attention included), and
families or options whose attention cannot take merged tokens are refused before any work with a message
naming the model, the block and why."""

import pytest
import torch

from otcompress.errors import OTCError
from otcompress.models import build_model
from otcompress.tokens.patch import apply_token_reduction

from .conftest import run_cli, write_recipe
from .families import VITS, materialise, sensible_init

TINY = dict(img_size=32, patch_size=4, depth=2, num_classes=10)


def _gated():
    from timm.layers import Attention
    from timm.models.vision_transformer import VisionTransformer

    class Gated(Attention):
        def __init__(self, *a, **k):
            super().__init__(*a, gated=True, **k)

    return VisionTransformer(embed_dim=48, num_heads=3, attn_layer=Gated, **TINY)


@pytest.mark.parametrize("case", VITS, ids=[c.id for c in VITS])
def test_keep_one_is_the_identity_and_keep_below_one_reduces(case, tmp_path):
    arch, _ = materialise(case, tmp_path)
    torch.manual_seed(0)
    model = build_model(arch, case.args if not arch.startswith("hf:") else {})
    sensible_init(model, torch.randn(4, 3, case.size, case.size))
    x = torch.randn(3, 3, case.size, case.size)
    with torch.no_grad():
        ref = model(x)
        apply_token_reduction(model, {"method": case.method, "keep": 1.0})
        assert torch.allclose(model(x), ref, atol=1e-5)
        plan = apply_token_reduction(model, {"method": case.method, "keep": 0.75})
        out = model(x)
    assert plan["tokens_after_block"][-1] < plan["tokens_in"] and out.shape == ref.shape
    assert not torch.allclose(out, ref, atol=1e-4)


def test_gated_attention_is_applied_not_ignored():
    """Was: the patch dropped timm's attention gate, so keep = 1 already changed the logits by 0.118."""
    torch.manual_seed(0)
    model = _gated().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        apply_token_reduction(model, {"method": "tome", "keep": 1.0})
        assert torch.allclose(model(x), ref, atol=1e-6)


@pytest.mark.parametrize("arch,args,why", [
    ("timm:vit_tiny_patch16_224", dict(TINY, attn_layer="diff"), "DiffAttention"),
    ("timm:vit_tiny_patch16_224", dict(TINY, global_pool="map"), "attention pooling"),
    ("timm:vit_tiny_patch16_224", dict(TINY, dynamic_img_size=True), "dynamic_img_size"),
    ("timm:swin_tiny_patch4_window7_224", dict(img_size=32, patch_size=2, window_size=4, depths=(1, 1), embed_dim=24,
                                               num_heads=(1, 2), num_classes=10), "windowed attention"),
    ("timm:beit_base_patch16_224", dict(img_size=32, patch_size=4, depth=1, embed_dim=48, num_heads=3, num_classes=10),
     "relative position"),
    ("torchvision:resnet18", {"num_classes": 10}, "no token adapter for ResNet"),
])
def test_unsupported_attention_is_refused_by_name(arch, args, why):
    model = build_model(arch, args)
    with pytest.raises(OTCError, match=why) as e:
        apply_token_reduction(model, {"method": "tome", "keep": 0.9})
    assert type(model).__name__ in str(e.value) or "block" in str(e.value)


def test_a_tokens_stage_on_a_cnn_exits_2_before_any_work(tmp_path):
    p = write_recipe(tmp_path, """
name = "t"
[model]
arch = "torchvision:resnet18"
args = {num_classes = 10}
input_shape = [1, 3, 32, 32]
[[stages]]
kind = "fold_bn"
[[stages]]
kind = "tokens"
method = "tome"
keep = 0.9
""")
    res = run_cli("run", p, "--out", tmp_path / "o")
    assert res.exit_code == 2 and "stages[1] (tokens)" in res.output and "no token adapter for ResNet" in res.output
    assert "[1/2]" not in res.output and not (tmp_path / "o").exists()


def test_inspect_describes_the_token_plan_of_a_hugging_face_vit(tmp_path):
    from .families import Case

    arch, _ = materialise(Case("hf:vit", {}, 32), tmp_path / "m")
    p = write_recipe(tmp_path, f"""
name = "t"
[model]
arch = "{arch}"
input_shape = [1, 3, 32, 32]
[[stages]]
kind = "tokens"
method = "tome"
keep = 0.75
""")
    res = run_cli("inspect", p)
    assert res.exit_code == 0, res.output
    assert "hf-vit adapter" in res.output and "tokens stage (tome)" in res.output and "prefix tokens 1" in res.output
