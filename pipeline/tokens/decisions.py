"""The merge decisions of token-reducing blocks (`dest`: every token's output slot), named
`tokens.dest.<block>`. `recording()` collects them during a forward pass (the ONNX export names them in the
graph, and the PyTorch runner reports its own); `forcing(dests)` makes every block take given decisions
instead of computing them. Validation uses the two to replay an exported model's decisions in PyTorch:
near-tie merge decisions flip between any two float computations, so comparing logits is only exact
when both sides merged the same tokens."""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn as nn

_RECORD: list[dict] = []
_FORCE: list[dict] = []


def name(layer: int) -> str:
    return f"tokens.dest.{layer}"


@contextlib.contextmanager
def recording():
    rec: dict[str, torch.Tensor] = {}
    _RECORD.append(rec)
    try:
        yield rec
    finally:
        _RECORD.pop()


@contextlib.contextmanager
def forcing(dests: dict[str, torch.Tensor]):
    _FORCE.append(dests)
    try:
        yield
    finally:
        _FORCE.pop()


def decide(layer: int, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    key = name(layer)
    forced = _FORCE[-1].get(key) if _FORCE else None
    dest = forced.to(torch.long) if forced is not None else compute()
    if _RECORD:
        _RECORD[-1][key] = dest
    return dest


def names(model: nn.Module) -> list[str]:
    """Decision names of the model's reducing blocks, in order (empty for models without token reduction)."""
    return [name(m._tok.layer) for m in model.modules() if getattr(getattr(m, "_tok", None), "r", 0) > 0]
