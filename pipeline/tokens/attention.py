"""The attention every reduced block runs (what the token patch and the family adapters share): scaled
dot-product attention with proportional attention from the token sizes, and the split of a packed qkv
projection into heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def split_qkv(qkv: torch.Tensor, heads: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A packed (B, N, 3*H*hd) projection as q, k, v of shape (B, H, N, hd) each."""
    B, N = qkv.shape[:2]
    return qkv.reshape(B, N, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)


def attention(qkv: tuple, x_shape, size: torch.Tensor | None, scale: float, dropout: float = 0.0):
    """Attention over (B, H, N, hd) q, k, v with log(size) added to the logits (proportional attention)
    when sizes are given; returns the heads concatenated (B, N, H*hd) and the keys averaged over heads."""
    q, k, v = qkv
    B, N = x_shape[:2]
    bias = None if size is None else size.log()[:, None, None, :, 0].to(q.dtype)  # (B, 1, 1, N)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, scale=scale)
    return out.transpose(1, 2).reshape(B, N, -1), k.mean(1)
