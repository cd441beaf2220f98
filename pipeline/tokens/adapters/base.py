"""The TokenAdapter interface, its registry and the families that are refused by name."""


from __future__ import annotations

import torch
import torch.nn as nn

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
    """One model family. `classes()` are the model classes it is written for and `matches` whether it takes a
    model (default: an instance of one of them); among the adapters that match, the one declaring the most
    specific class of the model wins (a plugin's adapter for a subclass beats the family's), adapters that
    match by structure alone come last. `refusal` explains why a matched model cannot be reduced (None if it
    can). Per block: `norm1`, `attend` (-> attention branch output, metric: the keys
    averaged over heads, with proportional attention from the sizes), `attn_residual` (layer scale, drop
    path, dropout), `mlp_residual`, and `finish` for the last block (what the head expects)."""

    name = "adapter"
    internal_mask = False  # the family's own code passes every block an all-visible mask (never a caller's)

    def classes(self) -> tuple[type, ...]:
        return ()

    def matches(self, model: nn.Module) -> bool:
        return bool(self.classes()) and isinstance(model, self.classes())

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
