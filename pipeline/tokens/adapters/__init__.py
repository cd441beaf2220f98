"""Token adapters, one small file per model family (as ToMe keeps patch/timm.py, patch/swag.py, ...): an
adapter says where a family keeps its blocks, norms, attention and protected tokens, and refuses models
whose attention cannot take merged tokens before any work is done. The merge is tokens/merge.py for all."""

from __future__ import annotations

import torch.nn as nn

from ...errors import OTCError
from .base import ADAPTERS, REFUSED, TokenAdapter
from . import hf, timm, torchvision  # noqa: E402,F401  (each registers itself)

__all__ = ["ADAPTERS", "REFUSED", "TokenAdapter", "adapter_for", "find_adapter", "is_vit"]


def _specificity(ad: TokenAdapter, model: nn.Module) -> int:
    """Position in the model's MRO of the most specific class the adapter declares (structural: last)."""
    mro = type(model).__mro__
    hits = [mro.index(c) for c in ad.classes() if c in mro]
    return min(hits) if hits else len(mro)


def find_adapter(model: nn.Module) -> TokenAdapter | None:
    """The most specific adapter that matches the model (ties: registration order), or None."""
    matching = [ad for ad in ADAPTERS.values() if ad.matches(model)]
    return min(matching, key=lambda ad: _specificity(ad, model)) if matching else None


def adapter_for(model: nn.Module) -> TokenAdapter:
    """The model's adapter, after its refusal check.

    Raises:
        OTCError: the family cannot take merged tokens (why), or no adapter matches (the supported ones).
    """
    for cls in type(model).__mro__:
        if cls.__name__ in REFUSED:
            raise OTCError(f"tokens: {cls.__name__} cannot take merged tokens: {REFUSED[cls.__name__]}")
    ad = find_adapter(model)
    if ad is None:
        raise OTCError(f"tokens: no token adapter for {type(model).__name__}; supported: " + ", ".join(ADAPTERS))
    why = ad.refusal(model)
    if why:
        raise OTCError(f"tokens: {type(model).__name__}: {why}")
    return ad


def is_vit(model: nn.Module) -> bool:
    return find_adapter(model) is not None
