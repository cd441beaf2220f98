"""Make a ViT reduce its tokens in every block, the way ToMe patches timm: each block's class is swapped
for a subclass whose forward merges after the attention residual and before the MLP. Works on timm's
VisionTransformer/DeiT and on the built-in `vit` (same attribute names).

Unlike ToMe, token sizes do not live in a dict shared by the blocks (torch.export does not keep such
state coherent): the blocks pass (tokens, sizes) to each other through the model's Sequential, the first
block taking plain tokens and the last returning them, so the patched model is stateless and exports."""

from __future__ import annotations

import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import OTCError
from . import merge as M


def vit_parts(model: nn.Module):
    blocks = getattr(model, "blocks", None)
    pe = getattr(model, "patch_embed", None)
    if blocks is None or pe is None or not all(hasattr(b, "attn") and hasattr(b.attn, "qkv") for b in blocks):
        raise OTCError(f"{type(model).__name__} is not a ViT with timm-style .patch_embed and .blocks[i].attn.qkv; "
                       "the tokens stage supports timm VisionTransformer/DeiT and the built-in `vit`")
    n = getattr(pe, "num_patches", None)
    if n is None:
        gs = getattr(pe, "grid_size", None)
        n = gs[0] * gs[1] if gs else None
    if n is None:
        raise OTCError(f"{type(model).__name__}.patch_embed has no num_patches")
    return list(blocks), int(n), int(getattr(model, "num_prefix_tokens", 1))


def schedule(n_patches: int, depth: int, cfg: dict) -> list[int]:
    """Tokens removed by each block (r_l), fixed when the stage is applied."""
    blocks = set(cfg.get("blocks") or range(depth))
    bad = [b for b in blocks if not 0 <= b < depth]
    if bad:
        raise OTCError(f"tokens.blocks: {bad} out of range; the model has blocks 0..{depth - 1}")
    keep, r_const = cfg.get("keep"), cfg.get("r")
    if isinstance(keep, list) and len(keep) != depth:
        raise OTCError(f"tokens.keep: list has {len(keep)} entries; the model has {depth} blocks")
    rs, n = [], n_patches
    for layer in range(depth):
        if layer not in blocks:
            r = 0
        elif r_const is not None:
            r = r_const
        else:
            k = keep[layer] if isinstance(keep, list) else keep
            r = n - int(round(k * n))
        r = max(0, min(r, n // 2))  # bipartite matching can merge at most half the tokens
        rs.append(r)
        n -= r
    return rs


def attention(attn: nn.Module, x: torch.Tensor, size: torch.Tensor | None):
    """timm-style attention that also returns the keys averaged over heads, with log(size) added to
    the logits (proportional attention) when sizes are given."""
    B, N, C = x.shape
    H = attn.num_heads
    hd = getattr(attn, "head_dim", C // H)
    q, k, v = attn.qkv(x).reshape(B, N, 3, H, hd).permute(2, 0, 3, 1, 4).unbind(0)
    q = attn.q_norm(q) if hasattr(attn, "q_norm") else q
    k = attn.k_norm(k) if hasattr(attn, "k_norm") else k
    bias = None if size is None else size.log()[:, None, None, :, 0].to(q.dtype)  # (B, 1, 1, N)
    drop = attn.attn_drop.p if attn.training and isinstance(getattr(attn, "attn_drop", None), nn.Dropout) else 0.0
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=drop, scale=attn.scale)
    out = out.transpose(1, 2).reshape(B, N, H * hd)
    norm = getattr(attn, "norm", None)
    out = norm(out) if isinstance(norm, nn.Module) else out
    out = attn.proj(out)
    out = attn.proj_drop(out) if hasattr(attn, "proj_drop") else out
    return out, k.mean(1)


def reduce_tokens(x, metric, size, prefix: int, r: int, cfg: dict, layer: int, depth: int):
    """Merge/drop r patch tokens; prefix (class/distillation) tokens are never touched."""
    method, mode = cfg["method"], cfg.get("mode", "drop")
    if size is None:
        size = x.new_ones(x.shape[0], x.shape[1], 1)
    mt = metric[:, prefix:]
    n = mt.shape[1]
    if method == "tome":
        dest = M.tome(mt, r)
    elif method == "pitome":
        m0 = cfg.get("margin", 0.9)
        dest = M.pitome(mt, r, margin=m0 - m0 * layer / depth, alpha=cfg.get("alpha", 1.0))
    else:
        dest = M.otprune(mt, n - r, gamma=cfg.get("gamma", 0.01), mode=mode)
    own = torch.arange(prefix, device=x.device).expand(x.shape[0], -1)  # prefix tokens keep their own slots
    drops = method == "otprune" and mode == "drop"  # the only mode that marks tokens with -1
    dest = torch.cat([own, torch.where(dest >= 0, dest + prefix, dest) if drops else dest + prefix], dim=1)
    return M.merge_weighted(x, size, dest, prefix + n - r)


class _ReducingBlock:
    """Mixed into the block's own class; forward follows timm's Block (ls/drop_path where present)."""

    def forward(self, x, attn_mask=None):
        if attn_mask is not None:  # timm passes one only when its caller does
            raise OTCError(f"block {self._tok_layer}: a token-reduced ViT cannot take an attention mask (it is sized "
                           "for the input tokens, but every block changes the token count); call it without attn_mask")
        cfg = self._tok_cfg
        x, size = x if isinstance(x, tuple) else (x, None)
        y, metric = attention(self.attn, self.norm1(x), size if cfg.get("prop_attn", True) else None)
        y = self.ls1(y) if hasattr(self, "ls1") else y
        x = x + (self.drop_path1(y) if hasattr(self, "drop_path1") else y)
        if self._tok_r > 0:
            x, size = reduce_tokens(x, metric, size, self._tok_prefix, self._tok_r, cfg, self._tok_layer, self._tok_depth)
        y = self.mlp(self.norm2(x))
        y = self.ls2(y) if hasattr(self, "ls2") else y
        x = x + (self.drop_path2(y) if hasattr(self, "drop_path2") else y)
        return x if self._tok_last else (x, size)


_CLASSES: dict = {}


def _subclass(mixin, cls):
    key = (mixin, cls)
    if key not in _CLASSES:
        _CLASSES[key] = type(f"TokenReduced{cls.__name__}", (mixin, cls), {})
    return _CLASSES[key]


def plan(n_patches: int, prefix: int, depth: int, cfg: dict) -> dict:
    """Tokens removed by, and left after, every block."""
    rs = schedule(n_patches, depth, cfg)
    left = [n_patches + prefix - removed for removed in itertools.accumulate(rs)]
    return {"removed_per_block": rs, "tokens_after_block": left, "tokens_in": n_patches + prefix}


def apply_token_reduction(model: nn.Module, cfg: dict) -> dict:
    """Patch in place; returns the plan (tokens removed and tokens left after every block)."""
    blocks, n_patches, prefix = vit_parts(model)
    depth = len(blocks)
    p = plan(n_patches, prefix, depth, cfg)
    for layer, (b, r) in enumerate(zip(blocks, p["removed_per_block"])):
        if not isinstance(b, _ReducingBlock):
            b.__class__ = _subclass(_ReducingBlock, type(b))
        b._tok_cfg, b._tok_r, b._tok_layer, b._tok_depth, b._tok_prefix = cfg, r, layer, depth, prefix
        b._tok_last = layer == depth - 1
    return p
