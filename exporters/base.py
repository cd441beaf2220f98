"""One interface for every backend, as Polygraphy's runners: `activate` loads the model (session, engine),
`infer` runs one batch and returns {output name: array}, `deactivate` frees it; a runner is also a context
manager. The base class checks inputs against the model's declared shape and dtype before anything runs,
and `infer_batched` feeds a static-batch model one batch-sized slice at a time.

Override points: `_activate`, `_infer`, `_deactivate` (and `describe`). Outputs are named as
otcompress.outputs names them (`logits` for a single tensor); a runner that `reports_taps` also returns the
model's taps (otcompress.taps: e.g. token-merge decisions) under their names when asked."""

from __future__ import annotations

import numpy as np

from otcompress.errors import OTCError


class Runner:
    name = "runner"
    input_shape: list = []  # ints, or strings for dynamic axes
    input_dtype = "float32"
    reports_taps = False  # can return the taps (discrete in-graph decisions) it took

    def __init__(self):
        self.active = False
        self.output_names: list[str] = []
        self.tap_names: list[str] = []

    def activate(self) -> "Runner":
        """Load what inference needs (idempotent). Raises OTCError if the model cannot be loaded."""
        if not self.active:
            self._activate()
            self.active = True
        return self

    def deactivate(self) -> None:
        if self.active:
            self._deactivate()
            self.active = False

    def __enter__(self):
        return self.activate()

    def __exit__(self, *exc):
        self.deactivate()

    def _activate(self) -> None:
        pass

    def _deactivate(self) -> None:
        pass

    def check_input(self, x: np.ndarray) -> None:
        """Raises OTCError where x's dtype or shape does not match the model's declared input."""
        if x.dtype != np.dtype(self.input_dtype):
            raise OTCError(f"{self.name}: input dtype {x.dtype} does not match the model's {self.input_dtype}")
        if len(x.shape) != len(self.input_shape) or any(
                isinstance(d, int) and d > 0 and d != s for d, s in zip(self.input_shape, x.shape)):
            raise OTCError(f"{self.name}: input shape {list(x.shape)} does not match the model's {self.input_shape}")

    def infer(self, x: np.ndarray, taps: bool = False) -> dict[str, np.ndarray]:
        """Outputs for one batch, {name: array} in output order.

        Args:
            x: the input batch (its dtype and shape are checked first).
            taps: also return the model's taps under their names (runners that report them; others ignore it).
        """
        self.activate()
        self.check_input(x)
        return self._infer(x, taps)

    def _infer(self, x: np.ndarray, taps: bool) -> dict[str, np.ndarray]:
        raise NotImplementedError

    @property
    def batch(self) -> int | None:
        b = self.input_shape[0] if self.input_shape else None
        return b if isinstance(b, int) and b > 0 else None

    def infer_batched(self, x: np.ndarray, taps: bool = False, batch: int | None = None) -> dict[str, np.ndarray]:
        """`infer` over x in slices of the model's static batch (else `batch`, else all at once)."""
        b = self.batch or batch or len(x)
        outs = [self.infer(np.ascontiguousarray(x[i:i + b]), taps) for i in range(0, len(x), b)]
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

    def describe(self) -> dict:
        return {"name": self.name}
