"""`otcompress inspect`: what the stages would touch, without changing anything."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import OTCError


def _model_for(target: Path):
    if target.suffix == ".toml":
        from ..models import load
        from ..recipe import load_recipe

        r = load_recipe(target)
        return load(r.model), r.model["input_shape"], r.stages
    if target.suffix == ".safetensors":
        from ..serialize import load_compressed

        model, meta = load_compressed(target)
        return model, meta["input_shape"], []
    raise OTCError(f"{target}: expected a recipe (.toml) or a compressed model (.safetensors)")


def describe(target: Path, scope: str | None = None) -> str:
    from ..metrics import count_flops, count_params
    from ..tokens.adapters import is_vit

    model, shape, stages = _model_for(target)
    lines = [f"{target}: {type(model).__name__}, {count_params(model):,} parameters, {count_flops(model, shape):,} FLOPs"]
    if is_vit(model):
        return "\n".join(lines + describe_tokens(model, stages))
    from ..channels.groups import GroupGraph

    ch = next((s for s in stages if s["kind"] in ("prune", "intrafusion", "dtp")), {})
    graph = GroupGraph(model, torch.zeros((1, *shape[1:])), exclude=ch.get("exclude", ()), scope=scope or ch.get("scope"))
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
    from ..tokens.adapters import ADAPTERS, adapter_for
    from ..tokens.patch import method_config, plan

    ad = next(a for _, a in ADAPTERS.items() if a.matches(model))
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
