"""What every stage sees (the model being compressed, the untouched original, the data, the output folder) and
what stages hand to later ones, as typed fields: exported artifacts, the token plan, the gate and result of
validation. compress.py turns them into report.json and the rebuild metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from .data import Dataset, load_dataset, sample_dataset
from .errors import OTCError
from .recipe import Recipe
from .validation.inputs import Probe


@dataclass
class Export:
    """An exported artifact (every registered backend whose `artifact` it is runs it), the precision it was
    built in, and for quantized artifacts the gate settings that judge it."""

    path: Path
    precision: str = "fp32"
    dynamic_batch: bool = False
    gate: dict | None = None


@dataclass
class Context:
    recipe: Recipe
    model: nn.Module
    original: nn.Module
    out: Path  # the staging folder this run writes into
    probe: Probe
    ref_outputs: dict  # {output name: numpy array}: the original's outputs on the probe inputs
    progress: bool = True
    resume: bool = False
    ckpt_dir: Path | None = None  # where training stages checkpoint (the staging folder; shared by all ranks)
    stage_index: int = 0
    exports: dict[str, Export] = field(default_factory=dict)  # artifact file name -> what it is
    folded: bool = False  # a fold_bn stage ran (the original's equivalent is the original folded)
    channel_maps: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> (new outputs x original outputs)
    tokens: dict | None = None  # the tokens stage's config (rebuilds the patch on load)
    gate: dict | None = None  # the validate stage's settings (reused by `otcompress validate`)
    validation: object | None = None  # the validate stage's result (validation.Validation)
    quantization: dict | None = None  # the quantize stage's record (what stayed float and why, the settings)

    @property
    def input_shape(self) -> list[int]:
        return self.recipe.model["input_shape"]

    @property
    def example(self) -> torch.Tensor:
        return torch.zeros((1, *self.input_shape[1:]))

    def record_shrink(self, maps: dict[str, torch.Tensor]) -> None:
        """Compose a channel stage's output maps with the earlier ones (repair reads them)."""
        for name, m in maps.items():
            prev = self.channel_maps.get(name)
            self.channel_maps[name] = m @ prev if prev is not None and prev.shape[0] == m.shape[1] else m

    def checkpoint(self, kind: str) -> Path:
        """This stage's own checkpoint file: stages never share one."""
        return self.ckpt_dir / "checkpoints" / f"stage{self.stage_index}-{kind}.pt"

    def dataset(self, which: str) -> Dataset | None:
        d = self.recipe.data
        if not d or not d.get(which):
            return None
        return load_dataset(d[which], d.get("limit") if which == "eval" else None)

    def normalise(self, ds: Dataset, idx=slice(None)) -> torch.Tensor:
        d = self.recipe.data or {}
        return ds.batch(idx, d.get("mean"), d.get("std"))

    def calibration(self, samples: int, seed: int) -> torch.Tensor:
        """`samples` calibration images (seeded, at random) from [data].calib, else [data].train, normalised as
        the run's data: what `repair` and `quantize` calibrate on (never the eval images).

        Raises:
            OTCError: the images do not have the model's input shape.
        """
        d = self.recipe.data
        x = self.normalise(sample_dataset(d.get("calib") or d["train"], samples, seed))
        if list(x.shape[1:]) != list(self.input_shape[1:]):
            raise OTCError(f"calibration images have shape {list(x.shape[1:])}; the model expects {list(self.input_shape[1:])}")
        return x
