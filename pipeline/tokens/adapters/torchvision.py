"""torchvision VisionTransformer (vit_b_16 and kin): class token, nn.MultiheadAttention (packed in_proj)."""

from __future__ import annotations

import torch.nn.functional as F

from .base import ADAPTERS, TokenAdapter
from ..attention import attention, split_qkv


class TorchvisionViT(TokenAdapter):
    name = "torchvision-vit"

    def classes(self):
        try:
            from torchvision.models.vision_transformer import VisionTransformer
        except Exception:  # torchvision is optional
            return ()
        return (VisionTransformer,)

    def refusal(self, model):
        for i, b in enumerate(self.blocks(model)):
            mha = b.self_attention
            if not mha._qkv_same_embed_dim or not mha.batch_first:
                return f"encoder_layer_{i}: nn.MultiheadAttention without a packed in_proj or batch_first is not implemented"
        return None

    def blocks(self, model):
        return list(model.encoder.layers)

    def num_patches(self, model):
        return (model.image_size // model.patch_size) ** 2

    def norm1(self, b, x):
        return b.ln_1(x)

    def attend(self, b, x, size):
        mha = b.self_attention
        B, N, C = x.shape
        H = mha.num_heads
        hd = C // H
        q, k, v = split_qkv(F.linear(x, mha.in_proj_weight, mha.in_proj_bias), H, hd)
        out, metric = attention((q, k, v), x.shape, size, hd ** -0.5, mha.dropout if mha.training else 0.0)
        return mha.out_proj(out), metric

    def attn_residual(self, b, y):
        return b.dropout(y)

    def mlp_residual(self, b, x):
        return b.mlp(b.ln_2(x))


ADAPTERS.register("torchvision-vit", TorchvisionViT())
