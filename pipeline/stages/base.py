"""The one interface every stage implements (as Polygraphy does for its tools): a schema, a contract (the
facts it needs from the recipe and the stages before it, the facts it provides), value checks made before
anything runs, and apply(ctx, params) -> details for the report.

Facts: `data.train`, `data.eval`, `data.calib` (the recipe's [data]); `model.vit`, `model.channels`,
`model.trainable` (facts about the built model, otcompress.plan checks them once it is built, still before any
stage runs); `folded`, `shrunk`, `tokens`, `onnx`, `int8`, `tensorrt` (provided by stages)."""

from __future__ import annotations

from ..recipe.schema import Field

FACTS = {
    "data.train": "[data].train (labelled training images)",
    "data.eval": "[data].eval",
    "data.calib": "calibration images: [data].calib (or [data].train; never the eval images)",
    "data.any": "[data].train or [data].eval",
    "model.vit": "a ViT the tokens stage has an adapter for",
    "model.channels": "a model with channel groups that can shrink",
    "model.trainable": "a model the training stages can train (a classifier)",
    "folded": "a fold_bn stage before it",
    "shrunk": "a channel stage (prune, intrafusion or dtp) before it",
    "tokens": "a tokens stage before it",
    "onnx": "an export_onnx stage before it",
    "int8": "a quantize stage before it",
    "tensorrt": "an export_tensorrt stage before it",
    "tensorrt-int8": "an export_tensorrt stage with precision = 'int8' before it",
}


class Stage:
    kind: str = ""
    fields: dict[str, Field] = {}
    changes_model: bool = True
    trains: bool = False  # under torchrun, ranks other than 0 stop after a training stage

    def needs(self, params: dict) -> dict[str, str]:
        """Facts that must hold before this stage (alternatives joined by '|'), each with the reason ("" if
        the stage's kind says it all)."""
        return {}

    def provides(self, params: dict) -> set[str]:
        return set()

    def conflicts(self, params: dict) -> set[str]:
        """Facts that must not hold yet (e.g. a second tokens stage)."""
        return set()

    def check(self, params: dict, model: dict, data: dict | None, facts: dict) -> list[str]:
        """Value checks that need more than one key, or earlier stages' settings (`facts` maps each fact
        provided so far to the params of the stage that provided it). Each problem is a message, or (key, message)
        where one key is at fault."""
        return []

    def apply(self, ctx, params: dict) -> dict:
        raise NotImplementedError
