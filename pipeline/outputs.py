"""A model's outputs as a tree of tensors (a tensor, tuple, list, dict, dataclass or Hugging Face ModelOutput),
named by their path: `out` and `aux` of a torchvision segmenter, `0` and `1` of a tuple, `head.boxes` of
nested dicts. A model with one tensor output names it `logits`. Every stage, export, runner and check sees
the same names in the same order; ONNX graph outputs carry them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

SINGLE = "logits"  # the name of a model's only output


def flatten(out: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """{path: tensor} in the model's own order; None leaves are skipped.

    Raises:
        TypeError: a leaf is neither a tensor nor None (the message describes it).
    """
    if isinstance(out, torch.Tensor):
        return {prefix or SINGLE: out}
    if out is None:
        return {}
    if isinstance(out, Mapping) or (hasattr(out, "keys") and hasattr(out, "__getitem__")):
        items = [(str(k), out[k]) for k in out.keys()]
    elif dataclasses.is_dataclass(out) and not isinstance(out, type):
        items = [(f.name, getattr(out, f.name)) for f in dataclasses.fields(out)]
    elif isinstance(out, (tuple, list)):
        items = [(str(i), v) for i, v in enumerate(out)]
    else:
        raise TypeError(f"an output{' ' + repr(prefix) if prefix else ''} of type {type(out).__name__}")
    flat: dict[str, torch.Tensor] = {}
    for k, v in items:
        flat.update(flatten(v, f"{prefix}.{k}" if prefix else k))
    return flat


def describe(out: Any) -> str:
    """What a model returned, for error messages: 'a tuple of 2 values', "a dict with keys ['out']"."""
    if isinstance(out, torch.Tensor):
        return f"a tensor of shape {list(out.shape)}"
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)} values"
    if isinstance(out, Mapping):
        return f"a dict with keys {sorted(map(str, out))[:6]}"
    return f"a {type(out).__name__}"


class Flat(nn.Module):
    """The model with its outputs flattened to a tuple in `flatten` order (what an exporter needs), followed by
    the values of the taps recorded during the call when `with_taps` is set (see taps.py)."""

    def __init__(self, model: nn.Module, with_taps: bool = False):
        super().__init__()
        self.model, self.with_taps = model, with_taps

    def forward(self, x):
        if not self.with_taps:
            return tuple(flatten(self.model(x)).values())
        from .taps import recording

        with recording() as rec:
            out = flatten(self.model(x))
        return (*out.values(), *rec.values())


def names(model: nn.Module, example: torch.Tensor) -> list[str]:
    """The model's output names, from one forward pass on `example`."""
    with torch.no_grad():
        return list(flatten(model(example)))
