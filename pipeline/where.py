"""Where work is when something unexpected fails: the stage in progress and, where the stage says so, the
layer. An unexpected exception leaves a stage as StageFailed carrying both, and the CLI reports it in one
line (exit 3) with the path of the full traceback, never as a raw traceback."""

from __future__ import annotations

import contextlib
from pathlib import Path

from .errors import EXIT_INTERNAL, OTCError

_STATE: dict = {"stage": None, "layer": None, "log_dir": None}


class StageFailed(Exception):
    exit_code = EXIT_INTERNAL

    def __init__(self, stage: str, layer: str | None, error: BaseException, log_dir: Path | None):
        self.stage, self.layer, self.error, self.log_dir = stage, layer, error, log_dir
        at = f" at layer {layer}" if layer else ""
        super().__init__(f"{stage}{at}: {type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}")


def set_log_dir(path: Path | None) -> None:
    """Where a traceback is written if a stage fails unexpectedly (the run's staging folder)."""
    _STATE["log_dir"] = path


def at_layer(name: str | None) -> None:
    """Stages call this as they move from layer to layer (cheap: one dict write)."""
    _STATE["layer"] = name


@contextlib.contextmanager
def stage_scope(label: str, prefix: str | None = None):
    """`label` names the work ("stages[1] (prune)", "loading the model"); OTCErrors from inside get `prefix`
    (the recipe) and the label in front, anything unexpected becomes StageFailed."""
    prev = dict(_STATE)
    _STATE.update(stage=label, layer=None)
    try:
        yield
    except OTCError as e:
        raise type(e)(f"{prefix + ': ' if prefix else ''}{label}: {e}") from None
    except StageFailed:
        raise
    except Exception as e:
        raise StageFailed(label, _STATE["layer"], e, _STATE["log_dir"]) from e
    finally:
        _STATE.update(stage=prev["stage"], layer=prev["layer"])
