"""Hugging Face transformers ViT and DeiT (ViTForImageClassification, DeiTForImageClassification,
DeiTForImageClassificationWithTeacher; class and distillation tokens), transformers 5 layout."""

from __future__ import annotations

from .base import ADAPTERS, TokenAdapter
from ..attention import attention


def _base(model):
    return getattr(model, "vit", None) or getattr(model, "deit", None)


class HFViT(TokenAdapter):
    """transformers builds an all-visible bidirectional mask inside the model (it cannot skip it while
    exporting) and hands it to every layer; the logits-only model takes no mask from its caller, so the
    reduced layers may ignore it."""

    name = "hf-vit"
    internal_mask = True

    def matches(self, model):
        base = _base(model)
        return (type(model).__module__.startswith("transformers.") and base is not None
                and hasattr(base, "embeddings") and hasattr(base, "layers"))

    def refusal(self, model):
        for i, b in enumerate(self.blocks(model)):
            a = getattr(b, "attention", None)
            if not all(hasattr(a, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
                return f"layer {i}: attention {type(a).__name__} is not the transformers 5 q/k/v/o layout the token patch implements"
        return None

    def blocks(self, model):
        return list(_base(model).layers)

    def num_patches(self, model):
        return int(_base(model).embeddings.patch_embeddings.num_patches)

    def num_prefix(self, model):
        return 2 if hasattr(_base(model).embeddings, "distillation_token") else 1

    def norm1(self, b, x):
        return b.layernorm_before(x)

    def attend(self, b, x, size):
        a = b.attention
        B, N, _ = x.shape
        shape = (B, N, -1, a.head_dim)
        q, k, v = (p(x).view(shape).transpose(1, 2) for p in (a.q_proj, a.k_proj, a.v_proj))
        out, metric = attention((q, k, v), x.shape, size, a.scaling, a.attention_dropout if a.training else 0.0)
        return a.o_proj(out), metric

    def attn_residual(self, b, y):
        return b.dropout(y)

    def mlp_residual(self, b, x):
        return b.dropout(b.mlp(b.layernorm_after(x)))


ADAPTERS.register("hf-vit", HFViT())
