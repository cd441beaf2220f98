"""One training stage's checkpoint file (the stage's own: stages never share one), written atomically every
epoch by rank 0 and read back with `weights_only=True` (tensors, numbers, strings, lists and dicts only)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .distributed import dist_info


class Checkpoints:
    def __init__(self, path: Path):
        self.path = path

    def load(self) -> dict | None:
        """The last checkpoint, or None where there is none."""
        return torch.load(self.path, map_location="cpu", weights_only=True) if self.path.exists() else None

    def save(self, state: dict) -> None:
        if dist_info()[0] != 0:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)
