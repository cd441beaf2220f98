"""recipe -> plan: the one place a run is checked before any work. A recipe's stage list against the stage
registry (kinds, keys, values: every stage's schema), the stage contracts (what each stage needs from the
recipe and the stages before it, what it provides, what it must not follow) and, once the model is built,
the facts about the model that stages need (a ViT for `tokens`, channels to shrink for a channel stage, a
task the training stages can train). A failure is one line naming the file, the stage, the key or the fact."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch.nn as nn

from .errors import OTCError
from .recipe import Recipe, load_recipe
from .recipe.loader import DATA_KEYS
from .recipe.schema import check_table, fail
from .stages import STAGES
from .stages.base import FACTS


@dataclass
class Plan:
    """A checked recipe: `stages` with every key's default filled in ({"kind": ..., **params})."""

    recipe: Recipe
    stages: list[dict]
    model_needs: list[tuple[int, str]] = field(default_factory=list)  # facts about the built model, checked once built

    @property
    def name(self) -> str:
        return self.recipe.name

    def stage_index(self, fact: str) -> int | None:
        """The first stage that provides `fact` (e.g. "shrunk": the channel stage a sweep varies)."""
        return next((i for i, st in enumerate(self.stages)
                     if fact in STAGES[st["kind"]].provides({k: v for k, v in st.items() if k != "kind"})), None)


def data_facts(data: dict | None) -> set[str]:
    d = data or {}
    facts = {f"data.{k}" for k in DATA_KEYS if d.get(k)}
    if d.get("train") or d.get("eval"):
        facts.add("data.any")
    if d.get("train"):
        facts.add("data.calib")  # training images calibrate too; test images never do
    return facts


def make_plan(recipe: Recipe) -> Plan:
    """Check the recipe's stages (kinds, schemas, contracts, cross-key values).

    Raises:
        OTCError: naming the file, `stages[i]` and the key, fact or order that is wrong.
    """
    where = str(recipe.path)
    stages, facts, model_needs = [], {f: None for f in data_facts(recipe.data)}, []
    for i, st in enumerate(recipe.stages):
        spath = f"stages[{i}]"
        if not isinstance(st, dict):
            fail(where, spath, f"expected a table, got {st!r}")
        kind = st.get("kind")
        if kind is None:
            fail(where, f"{spath}.kind", f"missing; expected one of {', '.join(sorted(STAGES))}")
        if kind not in STAGES:
            fail(where, f"{spath}.kind", f"unknown stage kind {kind!r}{STAGES.hint(kind)} (known: {', '.join(sorted(STAGES))})")
        stage = STAGES[kind]
        params = check_table({k: v for k, v in st.items() if k != "kind"}, stage.fields, where, spath)
        for need, why in sorted(stage.needs(params).items()):
            alts = need.split("|")
            if any(a in facts for a in alts):
                continue
            if all(a.startswith("model.") for a in alts):
                model_needs.append((i, need))
                continue
            fail(where, spath, f"{kind} needs {' or '.join(FACTS[a] for a in alts)}" + (f": {why}" if why else ""))
        for c in sorted(stage.conflicts(params)):
            if c in facts:
                fail(where, spath, f"{kind} cannot come after {FACTS[c]}")
        exported = [f for f in ("onnx", "tensorrt", "int8", "tensorrt-int8") if f in facts]
        if stage.changes_model and exported:
            fail(where, spath, f"{kind} changes the model after it was exported ({', '.join(exported)}): "
                               "put the export stages after every stage that changes the model")
        for msg in stage.check(params, recipe.model, recipe.data, facts):  # a message, or (key, message)
            key, text = msg if isinstance(msg, tuple) else (None, msg)
            fail(where, f"{spath}.{key}" if key else spath, text)
        facts.update({f: params for f in stage.provides(params)})
        stages.append({"kind": kind, **params})
    return Plan(recipe, stages, model_needs)


def load_plan(path: str | Path, overrides: list[str] = (), edit=None) -> Plan:
    """`load_recipe` then `make_plan`: everything that can be checked without building the model."""
    return make_plan(load_recipe(path, overrides, edit))


# ---- facts about the built model -------------------------------------------------------------------
MODEL_FACTS: dict = {}


def model_fact(name: str):
    """Register `check(model, example) -> None` (raises OTCError saying why the fact does not hold)."""
    def add(fn):
        MODEL_FACTS[name] = fn
        return fn

    return add


@model_fact("model.vit")
def _vit(model, example):
    from .tokens.adapters import adapter_for

    adapter_for(model)


@model_fact("model.trainable")
def _trainable(model, example):
    from .tasks import task_of
    from .outputs import flatten
    import torch

    with torch.no_grad():
        outs = flatten(model(example))
    why = task_of(model, outs, example).trainable()
    if why:
        raise OTCError(why)


@model_fact("model.channels")
def _channels(model, example):
    from .channels.groups import GroupGraph

    graph = GroupGraph(model, example)
    if not graph.groups():
        whole = "; ".join(f"{f.root}: {f.reason}" for f in graph.frozen[:4])
        raise OTCError(f"nothing to shrink: no channel group of {type(model).__name__} can shrink"
                       + (f" (left whole: {whole})" if whole else ""))


def check_model(plan: Plan, model: nn.Module, example) -> None:
    """The facts about the built model the stages need, before any stage runs.

    Raises:
        OTCError: naming the file, the stage and why the model does not have the fact.
    """
    done: dict[str, str | None] = {}
    for i, need in plan.model_needs:
        kind = plan.stages[i]["kind"]
        errors = []
        for alt in need.split("|"):
            if alt not in done:
                try:
                    MODEL_FACTS[alt](model, example)
                    done[alt] = None
                except OTCError as e:
                    done[alt] = str(e)
            if done[alt] is None:
                break
            errors.append(done[alt])
        else:
            raise OTCError(f"{plan.recipe.path}: stages[{i}] ({kind}): {errors[0]}")
