"""The Hugging Face adapter: image classifiers there take `pixel_values` and return a ModelOutput of which the
pipeline needs the logits; a mixin swapped into the model's class (otcompress.surgery) makes it return the
logits tensor without changing its state_dict keys."""

from __future__ import annotations

import torch.nn as nn

from ..surgery import swap_class


class LogitsOnly:
    def forward(self, x, *args, **kwargs):
        out = super().forward(x, *args, **kwargs)
        return out["logits"] if isinstance(out, dict) else out.logits


def logits_only(model: nn.Module) -> nn.Module:
    """The model, returning its `logits` (same class name, same keys)."""
    return swap_class(model, LogitsOnly, "")
