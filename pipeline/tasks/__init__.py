"""What a model's outputs mean, and so how a compressed model is judged against the original without trusting
raw numbers alone: classification (top-1 agreement, accuracy), segmentation (pixel agreement, mIoU against
the original's masks), detection (mAP of the compressed model's detections against the original's as pseudo
ground truth; true mAP with labels). One TASKS entry per task, each in its own file; a model whose outputs
no task claims is judged by its raw outputs alone (`generic`).

A Task says whether it `matches` a model (from the model and one forward pass's outputs), computes its
`fidelity` metrics from the original's and the compressed model's outputs, turns them into gate `checks`,
and names the `columns` the stage table shows."""

from __future__ import annotations

import torch

from .base import GENERIC, TASKS, Bound, Task, output_errors
from . import detection, segmentation, classification  # noqa: E402,F401  (each registers itself; order = priority)

__all__ = ["GENERIC", "TASKS", "Bound", "Task", "output_errors", "task_of"]


def task_of(model: torch.nn.Module, outputs: dict[str, torch.Tensor], example: torch.Tensor) -> Task:
    """The first registered task that claims the model (built-ins are specific), else the generic one."""
    return next((t for t in TASKS.values() if t.matches(model, outputs, example)), GENERIC)
