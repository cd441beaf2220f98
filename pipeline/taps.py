"""Named intermediate tensors a model exposes to validation: discrete decisions taken inside the graph (a
token-reducing block's merge decisions, tokens/decisions.py) that flip on near-ties between any two float
computations. `recording()` collects every tap of a forward pass in the order taken; `forcing(values)` makes
each named tap return the given value instead of computing it. An exporter names tap tensors in its graph
(without making them outputs), a runner that can read them back reports them, and the gate replays a
backend's taps in PyTorch so logits are compared for the same decisions."""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

_RECORD: list[dict[str, torch.Tensor]] = []
_FORCE: list[dict[str, torch.Tensor]] = []


@contextlib.contextmanager
def recording():
    """Yields a dict that fills with {tap name: value} during the block."""
    rec: dict[str, torch.Tensor] = {}
    _RECORD.append(rec)
    try:
        yield rec
    finally:
        _RECORD.pop()


@contextlib.contextmanager
def forcing(values: dict[str, torch.Tensor]):
    """Taps named in `values` return those values (as long integers) instead of computing theirs."""
    _FORCE.append(values)
    try:
        yield
    finally:
        _FORCE.pop()


def tap(name: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The tap's value: the forced one if any, else `compute()`; recorded when a recording is open."""
    forced = _FORCE[-1].get(name) if _FORCE else None
    value = forced.to(torch.long) if forced is not None else compute()
    if _RECORD:
        _RECORD[-1][name] = value
    return value


def tap_names(model: torch.nn.Module, example: torch.Tensor) -> list[str]:
    """The taps one forward pass of `model` on `example` takes, in order (empty for most models)."""
    with torch.no_grad(), recording() as rec:
        model(example)
    return list(rec)
