"""Adapters that make a model map images to one logits tensor without changing its state_dict keys (a
subclass swapped in, as the token patch does): Hugging Face models take `pixel_values` and return a
ModelOutput; dict-returning models return {"logits": ...}."""

from __future__ import annotations

import torch.nn as nn

_CLASSES: dict = {}


class _LogitsOnly:
    def forward(self, x, *args, **kwargs):
        out = super().forward(x, *args, **kwargs)
        return out["logits"] if isinstance(out, dict) else out.logits


def logits_only(model: nn.Module) -> nn.Module:
    cls = type(model)
    if isinstance(model, _LogitsOnly):
        return model
    if cls not in _CLASSES:
        _CLASSES[cls] = type(cls.__name__, (_LogitsOnly, cls), {"__module__": cls.__module__})
    model.__class__ = _CLASSES[cls]
    return model


def unwrapped_class(model: nn.Module) -> type:
    """The model's own class, under the adapter."""
    return next(c for c in type(model).__mro__ if c not in _CLASSES.values() and c is not _LogitsOnly)
