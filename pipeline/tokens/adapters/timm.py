"""timm VisionTransformer and DeiT (class, distillation and register tokens, qk-norm, gated attention,
scale-norm, layer scale, drop path, global_pool 'token' or 'avg'), and the built-in `vit` (same names)."""

from __future__ import annotations

import torch
import torch.nn as nn

from .base import ADAPTERS, TokenAdapter
from ...surgery import original_class
from ..attention import attention, split_qkv

POOLS = ("token", "avg", "")


def _supported_attention(a) -> bool:
    """timm's Attention (qkv, qk-norm, scale-norm, gate) or the built-in ViT's, or a subclass that only
    changes constructor arguments: a forward of its own could compute anything."""
    from ...models.zoo.vit import Attention as Builtin

    kinds = [Builtin]
    try:
        from timm.layers import Attention as TimmAttention

        kinds.append(TimmAttention)
    except Exception:  # timm is optional
        pass
    return any(isinstance(a, k) and type(a).forward is k.forward for k in kinds) and getattr(a, "qkv", None) is not None


class TimmViT(TokenAdapter):
    name = "timm-vit"

    def classes(self):
        from ...models.zoo.vit import VisionTransformer as Builtin

        try:
            from timm.models.vision_transformer import VisionTransformer
        except Exception:  # timm is optional
            return (Builtin,)
        return (Builtin, VisionTransformer)

    def matches(self, model):  # by structure: timm's ViT relatives (DeiT distilled, ...) keep these names
        blocks = getattr(model, "blocks", None)
        return (isinstance(blocks, nn.Sequential) and hasattr(model, "patch_embed") and len(blocks) > 0
                and all(hasattr(b, "attn") and hasattr(b, "norm1") for b in blocks))

    def refusal(self, model):
        if getattr(model, "dynamic_img_size", False):
            return "dynamic_img_size = True: the token plan needs a fixed number of patches (build it with a fixed img_size)"
        if getattr(model, "attn_pool", None) is not None:
            return "global_pool = 'map' (attention pooling) is not implemented by the token patch"
        pool = getattr(model, "global_pool", "token")
        if pool not in POOLS:
            return f"global_pool = {pool!r} is not implemented by the token patch (it supports 'token' and 'avg')"
        if pool == "avg" and not isinstance(getattr(model, "norm", nn.Identity()), nn.Identity):
            return "global_pool = 'avg' with the final norm before pooling (fc_norm = False): merged tokens cannot be averaged exactly"
        for i, b in enumerate(model.blocks):
            kind = original_class(b).__name__
            if kind != "Block":
                return f"block {i} is a {kind}; the token patch implements timm's pre-norm Block only"
            a = b.attn
            if not _supported_attention(a):
                return (f"block {i}: attention {type(a).__name__} (separate q/k/v, rotary or differential attention, "
                        "or a forward of its own) is not implemented by the token patch")
        return None

    def blocks(self, model):
        return list(model.blocks)

    def num_patches(self, model):
        pe = model.patch_embed
        n = getattr(pe, "num_patches", None)
        if n is None and getattr(pe, "grid_size", None):
            n = pe.grid_size[0] * pe.grid_size[1]
        return int(n)

    def num_prefix(self, model):
        return int(getattr(model, "num_prefix_tokens", 1))

    def norm1(self, b, x):
        return b.norm1(x)

    def attend(self, b, x, size):
        a = b.attn
        B, N, C = x.shape
        H = a.num_heads
        hd = getattr(a, "head_dim", C // H)
        gate = a.gate(x).sigmoid() if getattr(a, "gate", None) is not None else None
        q, k, v = split_qkv(a.qkv(x), H, hd)
        if hasattr(a, "q_norm"):
            q, k = a.q_norm(q), a.k_norm(k)
        drop = a.attn_drop.p if a.training and isinstance(getattr(a, "attn_drop", None), nn.Dropout) else 0.0
        out, metric = attention((q, k, v), x.shape, size, a.scale, drop)
        if isinstance(getattr(a, "norm", None), nn.Module):
            out = a.norm(out)
        if gate is not None:
            out = out * gate
        out = a.proj(out)
        return (a.proj_drop(out) if hasattr(a, "proj_drop") else out), metric

    def attn_residual(self, b, y):
        y = b.ls1(y) if hasattr(b, "ls1") else y
        return b.drop_path1(y) if hasattr(b, "drop_path1") else y

    def mlp_residual(self, b, x):
        y = b.mlp(b.norm2(x))
        y = b.ls2(y) if hasattr(b, "ls2") else y
        return b.drop_path2(y) if hasattr(b, "drop_path2") else y

    def finish(self, b, x, size):
        """'avg' pooling averages the patch tokens: weighting each merged token by its size makes that mean
        the mean over the original tokens (exact with no norm between the blocks and the pool)."""
        if size is None or b._tok.extra.get("pool") != "avg":
            return x
        p = b._tok.prefix
        w = size[:, p:] * (size.shape[1] - p) / size[:, p:].sum(1, keepdim=True)
        return torch.cat([x[:, :p], x[:, p:] * w.to(x.dtype)], dim=1)

    def extras(self, model):
        return {"pool": getattr(model, "global_pool", "token")}


ADAPTERS.register("timm-vit", TimmViT())
