"""`otcompress inspect`: what the stages would touch, without changing anything: a recipe, a compressed model,
or a model source alone (`torchvision:resnet18 --input-shape 1,3,224,224`)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import torch

from ..errors import OTCError


def _shape(text: str | None) -> list[int]:
    try:
        shape = [int(d) for d in (text or "").split(",") if d.strip()]
        if len(shape) < 2 or min(shape) < 1:
            raise ValueError
    except ValueError:
        raise OTCError(f"--input-shape {text!r}: expected comma-separated positive integers such as 1,3,224,224") from None
    return shape


def _args(text: str | None) -> dict:
    if not text:
        return {}
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError as e:
        raise OTCError(f"--args {text!r}: expected a TOML table such as '{{num_classes = 10}}' ({e})") from None


def _model_for(target: str, input_shape, args, checkpoint):
    path = Path(target)
    if path.suffix == ".toml":
        from ..models import load
        from ..plan import load_plan

        plan = load_plan(path)
        return load(plan.recipe.model), plan.recipe.model["input_shape"], plan.stages
    if path.suffix == ".safetensors":
        from ..serialize import load_compressed

        model, meta = load_compressed(path)
        return model, meta["input_shape"], []
    if ":" in target or not path.exists():  # a model source: built as a recipe's [model] would build it
        from ..models import load

        if input_shape is None:
            raise OTCError(f"{target}: a model source needs --input-shape (e.g. 1,3,224,224)")
        if checkpoint is not None and not checkpoint.is_file():
            raise OTCError(f"--checkpoint {checkpoint}: file not found")
        shape = _shape(input_shape)
        cfg = {"arch": target, "args": _args(args), "checkpoint": str(checkpoint) if checkpoint else None,
               "input_shape": shape}
        return load(cfg), shape, []
    raise OTCError(f"{target}: expected a recipe (.toml), a compressed model (.safetensors) or a model source "
                   "such as torchvision:resnet18")


def describe(target: str | Path, scope: str | None = None, *, input_shape: str | None = None, args: str | None = None,
             checkpoint: Path | None = None) -> str:
    """The inspect report (see the module docstring). Raises OTCError on a target it cannot read."""
    from ..metrics import count_flops, count_params
    from ..outputs import flatten
    from ..tasks import task_of
    from ..tokens.adapters import is_vit

    model, shape, stages = _model_for(str(target), input_shape, args, checkpoint)
    example = torch.zeros((1, *shape[1:]))
    with torch.no_grad():
        outs = flatten(model(example))
    task = task_of(model, outs, example)
    lines = [f"{target}: {type(model).__name__}, {count_params(model):,} parameters, {count_flops(model, shape):,} FLOPs",
             f"outputs ({task.name}): " + ", ".join(f"{k} {list(v.shape)}" for k, v in outs.items())]
    if is_vit(model):
        return "\n".join(lines + describe_tokens(model, stages))
    from ..channels.groups import GroupGraph

    ch = next((s for s in stages if s["kind"] in ("prune", "intrafusion", "dtp")), {})
    graph = GroupGraph(model, example, exclude=ch.get("exclude", ()), scope=scope or ch.get("scope"))
    groups = graph.groups()
    lines.append(f"channel groups ({graph.scope} scope): {len(groups)}")
    for g in groups:
        kind = "internal" if g.internal else "coupled"
        extra = [g.note] if g.note else []
        if g.n_chunks > 1:
            extra.append(f"{g.n_chunks} equal chunks")
        if g.forced is not None:
            extra.append(f"{int(g.forced.sum())} channels always kept")
        lines.append(f"  {g.root:<28} {g.n:>5} channels  stage {g.stage}  {kind:<8} producers: {', '.join(g.producers)}"
                     + (f"  ({'; '.join(extra)})" if extra else ""))
    if graph.frozen:
        lines.append(f"left whole: {len(graph.frozen)}")
        lines += [f"  {f.root:<28} {f.n:>5} channels  {f.reason}" for f in graph.frozen]
    return "\n".join(lines)


def describe_tokens(model, stages) -> list[str]:
    """Transformer blocks and, for each tokens stage, its plan; or why the model cannot take merged tokens."""
    from ..tokens.adapters import adapter_for, find_adapter
    from ..tokens.patch import method_config, plan

    ad = find_adapter(model)
    blocks, n, prefix = ad.blocks(model), ad.num_patches(model), ad.num_prefix(model)
    lines = [f"transformer blocks: {len(blocks)} ({ad.name} adapter), patch tokens {n}, prefix tokens {prefix}"]
    try:
        adapter_for(model)
    except OTCError as e:
        return lines + [f"  token reduction refused: {e}"]
    for st in stages:
        if st["kind"] == "tokens":
            p = plan(n, prefix, len(blocks), method_config(st))
            lines.append(f"  tokens stage ({st['method']}): removed per block {p['removed_per_block']}")
            lines.append(f"  tokens after each block {p['tokens_after_block']}")
    return lines
