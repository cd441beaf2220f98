"""The merge decisions of token-reducing blocks (`dest`: every token's output slot), exposed as taps named
`tokens.dest.<block>` (otcompress.taps): the export names them in the graph, runners report them, and
validation replays an exported model's decisions in PyTorch, since near-tie merge decisions flip between any
two float computations and logits are only comparable when both sides merged the same tokens."""

from __future__ import annotations

from typing import Callable

import torch

from ..taps import tap

PREFIX = "tokens.dest."  # the one place the decision-tensor names are spelled


def name(layer: int) -> str:
    return f"{PREFIX}{layer}"


def decide(layer: int, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Block `layer`'s decisions: computed, or forced by validation's replay."""
    return tap(name(layer), compute)
