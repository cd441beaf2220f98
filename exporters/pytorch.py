"""The PyTorch runner: the reference every exported backend is compared with."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from .base import Runner
from .onnx import OUTPUT


class TorchRunner(Runner):
    reports_decisions = True

    def __init__(self, model: nn.Module, name: str = "pytorch", device: str = "cpu", input_shape=None):
        super().__init__()
        self.model = model.eval().to(device)
        self.device = device
        self.name = name
        self.input_shape = ["batch", *input_shape[1:]] if input_shape else []

    def check_input(self, x):
        if self.input_shape:
            super().check_input(x)

    @torch.no_grad()
    def _infer(self, x, decisions):
        xt = torch.from_numpy(x).to(self.device)
        if not decisions:
            return {OUTPUT: self.model(xt).float().cpu().numpy()}
        from otcompress.tokens.decisions import recording

        with recording() as rec:
            out = self.model(xt)
        return {OUTPUT: out.float().cpu().numpy(), **{k: v.cpu().numpy() for k, v in rec.items()}}

    @torch.no_grad()
    def replay(self, x: np.ndarray, dests: dict[str, np.ndarray], batch: int = 64) -> np.ndarray:
        """Logits when every token-reducing block takes the given decisions instead of its own."""
        from otcompress.tokens.decisions import forcing

        outs = []
        for i in range(0, len(x), batch):
            forced = {k: torch.from_numpy(v[i:i + batch]).to(self.device) for k, v in dests.items()}
            with forcing(forced):
                outs.append(self.model(torch.from_numpy(x[i:i + batch]).to(self.device)).float().cpu().numpy())
        return np.concatenate(outs)

    def describe(self):
        return {"name": self.name, "device": self.device}
