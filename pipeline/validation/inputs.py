"""The inputs every measurement uses: the first samples of the eval set (normalised), or seeded standard
normal samples where there is none. One function, so the per-stage fidelity table and `validate` with the
same seed see the same inputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import OTCError


@dataclass
class Probe:
    x: np.ndarray  # float32, NCHW
    y: np.ndarray | None  # class labels
    source: str
    targets: dict | None = None  # detection boxes/classes or segmentation masks

    @property
    def labels(self):
        """What fidelity compares with: class labels, else the targets, else None."""
        return self.y if self.y is not None else self.targets


def probe_inputs(data: str | Path | None, mean, std, samples: int | None, seed: int, input_shape) -> Probe:
    if data is not None:
        from ..data import load_dataset

        ds = load_dataset(data, samples)
        x = ds.batch(slice(None), mean, std).numpy().astype(np.float32)
        if list(x.shape[1:]) != list(input_shape[1:]):
            raise OTCError(f"{data}: samples have shape {list(x.shape[1:])}; the model expects {list(input_shape[1:])} "
                           "(model.input_shape)")
        return Probe(x, ds.y.numpy() if ds.y is not None else None, f"{data} (first {len(x)})", ds.targets)
    n = samples or 64
    x = np.random.default_rng(seed).standard_normal((n, *input_shape[1:])).astype(np.float32)
    return Probe(x, None, f"seeded standard normal ({n} samples, seed {seed})")
