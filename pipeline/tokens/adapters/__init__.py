"""Token adapters, one small file per model family (as ToMe keeps patch/timm.py, patch/swag.py, ...): an
adapter says where a family keeps its blocks, norms, attention and protected tokens, and refuses models
whose attention cannot take merged tokens before any work is done. The merge is tokens/merge.py for all."""

from __future__ import annotations

import torch
import torch.nn as nn

from ...errors import OTCError
from ...registry import Registry

ADAPTERS = Registry("token adapter")

# Families that exist but cannot take merged tokens, by class name: the reason the tokens stage gives.
REFUSED = {
    "SwinTransformer": "windowed attention (Swin) needs the full token grid in every block",
    "SwinForImageClassification": "windowed attention (Swin) needs the full token grid in every block",
    "Swinv2ForImageClassification": "windowed attention (Swin) needs the full token grid in every block",
    "Beit": "its relative position bias table is indexed by token positions, which merging destroys",
    "BeitForImageClassification": "its relative position bias table is indexed by token positions, which merging destroys",
    "Data2VecVisionForImageClassification": "its relative position bias table is indexed by token positions",
    "Eva": "rotary position embeddings are indexed by token positions, which merging destroys",
    "MaxxVit": "windowed and grid attention need the full token grid",
    "CoaT": "convolutional position encodings need the full token grid",
}


class TokenAdapter:
    """One model family. `matches` picks the adapter; `refusal` explains why a matched model cannot be
    reduced (None if it can). Per block: `norm1`, `attend` (-> attention branch output, metric: the keys
    averaged over heads, with proportional attention from the sizes), `attn_residual` (layer scale, drop
    path, dropout), `mlp_residual`, and `finish` for the last block (what the head expects)."""

    name = "adapter"
    internal_mask = False  # the family's own code passes every block an all-visible mask (never a caller's)

    def matches(self, model: nn.Module) -> bool:
        raise NotImplementedError

    def refusal(self, model: nn.Module) -> str | None:
        return None

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        raise NotImplementedError

    def num_patches(self, model: nn.Module) -> int:
        raise NotImplementedError

    def num_prefix(self, model: nn.Module) -> int:
        return 1

    def extras(self, model: nn.Module) -> dict:
        """Per-model facts the block methods read (block._tok.extra), e.g. timm's pooling."""
        return {}

    def finish(self, block, x: torch.Tensor, size: torch.Tensor | None) -> torch.Tensor:
        return x


def adapter_for(model: nn.Module) -> TokenAdapter:
    """The model's adapter, after its refusal check; a clear error for families that cannot be reduced."""
    for cls in type(model).__mro__:
        if cls.__name__ in REFUSED:
            raise OTCError(f"tokens: {cls.__name__} cannot take merged tokens: {REFUSED[cls.__name__]}")
    for _, ad in ADAPTERS.items():
        if ad.matches(model):
            why = ad.refusal(model)
            if why:
                raise OTCError(f"tokens: {type(model).__name__}: {why}")
            return ad
    raise OTCError(f"tokens: no token adapter for {type(model).__name__}; supported: " + ", ".join(
        f"{ad.name}" for _, ad in ADAPTERS.items()))


def is_vit(model: nn.Module) -> bool:
    return any(ad.matches(model) for _, ad in ADAPTERS.items())


from . import hf, timm, torchvision  # noqa: E402,F401  (each registers itself)
