"""The PyTorch runner: the reference every exported backend is compared with."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from otcompress.outputs import flatten
from otcompress.taps import forcing, recording

from .base import Runner


class TorchRunner(Runner):
    """Runs an nn.Module; reports its taps, and can `replay` a backend's taps (the same decisions).

    Args:
        model: put in eval mode on `device`.
        name: e.g. "pytorch:compressed".
        device: "cpu" or "cuda".
        input_shape: the model's input shape (its batch dimension is free); None skips the input check.
    """

    reports_taps = True

    def __init__(self, model: nn.Module, name: str = "pytorch", device: str = "cpu", input_shape=None):
        super().__init__()
        self.model = model.eval().to(device)
        self.device = device
        self.name = name
        self.input_shape = ["batch", *input_shape[1:]] if input_shape else []

    def check_input(self, x):
        if self.input_shape:
            super().check_input(x)

    @staticmethod
    def _numpy(out) -> dict[str, np.ndarray]:
        return {k: v.float().cpu().numpy() for k, v in flatten(out).items()}

    @torch.no_grad()
    def _infer(self, x, taps):
        xt = torch.from_numpy(x).to(self.device)
        if not taps:
            outs = self._numpy(self.model(xt))
        else:
            with recording() as rec:
                outs = self._numpy(self.model(xt))
            self.tap_names = list(rec)
            outs.update({k: v.cpu().numpy() for k, v in rec.items()})
        self.output_names = [k for k in outs if k not in self.tap_names]
        return outs

    @torch.no_grad()
    def replay(self, x: np.ndarray, taps: dict[str, np.ndarray], batch: int = 64) -> dict[str, np.ndarray]:
        """Outputs when every tap takes the given values instead of its own."""
        outs = []
        for i in range(0, len(x), batch):
            forced = {k: torch.from_numpy(v[i:i + batch]).to(self.device) for k, v in taps.items()}
            with forcing(forced):
                outs.append(self._numpy(self.model(torch.from_numpy(x[i:i + batch]).to(self.device))))
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

    def describe(self):
        return {"name": self.name, "device": self.device}
