"""The one interface every stage implements (as Polygraphy does for its tools): a schema, the needs it
checks before anything runs, and apply(ctx, params) -> details for the report."""

from __future__ import annotations

from ..schema import Field


class Stage:
    kind: str = ""
    fields: dict[str, Field] = {}
    changes_model: bool = True
    trains: bool = False  # under torchrun, ranks other than 0 stop after a training stage

    def needs(self, params: dict, model: dict, data: dict | None) -> list[str]:
        return []

    def apply(self, ctx, params: dict) -> dict:
        raise NotImplementedError
