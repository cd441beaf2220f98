"""What every stage sees: the model being compressed, the untouched original, the data and the output folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .data import Dataset, load_dataset
from .recipe import Recipe


@dataclass
class Context:
    recipe: Recipe
    model: nn.Module
    original: nn.Module
    out: Path
    meta: dict
    probe_x: torch.Tensor
    probe_y: torch.Tensor | None
    ref_logits: torch.Tensor
    progress: bool = True
    resume: bool = False
    validation: dict | None = None
    files: dict = field(default_factory=dict)
    ckpt_dir: Path | None = None  # where training stages checkpoint (the staging folder; shared by all ranks)

    @property
    def input_shape(self) -> list[int]:
        return self.recipe.model["input_shape"]

    @property
    def example(self) -> torch.Tensor:
        return torch.zeros((1, *self.input_shape[1:]))

    def dataset(self, which: str) -> Dataset | None:
        d = self.recipe.data
        if not d or not d.get(which):
            return None
        return load_dataset(d[which], d.get("limit") if which == "eval" else None)

    def normalise(self, ds: Dataset, idx=slice(None)) -> torch.Tensor:
        d = self.recipe.data or {}
        return ds.batch(idx, d.get("mean"), d.get("std"))
