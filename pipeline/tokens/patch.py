"""Make a ViT reduce its tokens in every block, the way ToMe patches timm: each block's class is swapped for
a subclass whose forward merges after the attention residual and before the MLP. What differs between
model families (where the blocks, norms, attention and protected tokens are) is an adapter's business
(tokens/adapters); the merge itself is tokens/merge.py.

Unlike ToMe, token sizes do not live in a dict shared by the blocks (torch.export does not keep such state
coherent): the blocks pass (tokens, sizes) to each other, the first block taking plain tokens and the last
returning plain tokens, so the patched model is stateless and exports."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import OTCError
from ..surgery import swap_class
from . import merge as M
from .adapters import adapter_for
from .decisions import decide


def method_config(cfg: dict) -> dict:
    """cfg with the method's own keys filled with their defaults (recipes have them filled already)."""
    method = M.METHODS[cfg["method"]]
    return {**{k: f.default for k, f in method.fields.items()}, "prop_attn": True, **cfg}


def schedule(n_patches: int, depth: int, cfg: dict) -> list[int]:
    """Tokens removed by each block (r_l), fixed when the stage is applied. `blocks` (default: all) names
    the blocks that reduce; an empty list reduces none."""
    blocks = set(range(depth) if cfg.get("blocks") is None else cfg["blocks"])
    bad = [b for b in blocks if not 0 <= b < depth]
    if bad:
        raise OTCError(f"tokens.blocks: {bad} out of range; the model has blocks 0..{depth - 1}")
    keep, r_const = cfg.get("keep"), cfg.get("r")
    if isinstance(keep, list) and len(keep) != depth:
        raise OTCError(f"tokens.keep: list has {len(keep)} entries; the model has {depth} blocks")
    bipartite = M.METHODS[cfg["method"]].bipartite
    rs, n = [], n_patches
    for layer in range(depth):
        if layer not in blocks:
            r = 0
        elif r_const is not None:
            r = r_const
        else:
            k = keep[layer] if isinstance(keep, list) else keep
            r = n - int(round(k * n))
        r = max(0, min(r, n // 2 if bipartite else n - 1))  # bipartite matching merges at most half the tokens
        rs.append(r)
        n -= r
    return rs


def reduce_tokens(x, metric, size, prefix: int, r: int, cfg: dict, layer: int, depth: int):
    """Merge/drop r patch tokens; prefix (class/distillation/register) tokens are never touched."""
    cfg = method_config(cfg)
    method = M.METHODS[cfg["method"]]
    if size is None:
        size = x.new_ones(x.shape[0], x.shape[1], 1)
    mt = metric[:, prefix:]
    n = mt.shape[1]
    own = torch.arange(prefix, device=x.device).expand(x.shape[0], -1)  # prefix tokens keep their own slots

    def compute():
        dest = method.plan(mt, r, cfg, layer, depth)
        shifted = torch.where(dest >= 0, dest + prefix, dest) if method.drops(cfg) else dest + prefix
        return torch.cat([own, shifted], dim=1)

    return M.merge_weighted(x, size, decide(layer, compute), prefix + n - r)


@dataclass
class TokenState:
    """What one patched block needs: its family's adapter, the method config and its place in the plan."""

    adapter: object
    cfg: dict
    r: int
    layer: int
    depth: int
    prefix: int
    last: bool
    extra: dict


class _ReducingBlock:
    """Mixed into the block's own class. attention -> residual -> reduce -> MLP -> residual; the adapter
    supplies the family's pieces. Attention masks are refused: they are sized for the input tokens."""

    def forward(self, x, *args, **kwargs):
        t = self._tok
        mask = next((a for a in (*args, kwargs.get("attn_mask"), kwargs.get("attention_mask")) if isinstance(a, torch.Tensor)), None)
        if mask is not None and not t.adapter.internal_mask:
            raise OTCError(f"block {t.layer}: a token-reduced ViT cannot take an attention mask (it is sized for the input "
                           "tokens, but every block changes the token count); call it without one")
        ad = t.adapter
        x, size = x if isinstance(x, tuple) else (x, None)
        y, metric = ad.attend(self, ad.norm1(self, x), size if t.cfg.get("prop_attn", True) else None)
        x = x + ad.attn_residual(self, y)
        if t.r > 0:
            x, size = reduce_tokens(x, metric, size, t.prefix, t.r, t.cfg, t.layer, t.depth)
        x = x + ad.mlp_residual(self, x)
        return ad.finish(self, x, size) if t.last else (x, size)


def plan(n_patches: int, prefix: int, depth: int, cfg: dict) -> dict:
    """Tokens removed by, and left after, every block."""
    rs = schedule(n_patches, depth, cfg)
    left = [n_patches + prefix - removed for removed in itertools.accumulate(rs)]
    return {"removed_per_block": rs, "tokens_after_block": left, "tokens_in": n_patches + prefix}


def apply_token_reduction(model: nn.Module, cfg: dict) -> dict:
    """Patch in place; returns the plan (tokens removed and tokens left after every block) and the adapter."""
    ad = adapter_for(model)
    blocks, n_patches, prefix = ad.blocks(model), ad.num_patches(model), ad.num_prefix(model)
    depth = len(blocks)
    cfg = method_config(cfg)
    p = plan(n_patches, prefix, depth, cfg)
    for layer, (b, r) in enumerate(zip(blocks, p["removed_per_block"])):
        swap_class(b, _ReducingBlock, "TokenReduced")
        b._tok = TokenState(ad, cfg, r, layer, depth, prefix, layer == depth - 1, ad.extras(model))
    return {**p, "adapter": ad.name}
