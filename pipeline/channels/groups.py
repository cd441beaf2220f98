"""Channel groups: channels that must shrink together (residual adds, concat, depthwise convs, BN,
flatten->linear), discovered with Torch-Pruning's dependency graph.

Each group is described by layer slices indexed by the group's root channel, so the math in
importance.py and intrafusion.py never sees Torch-Pruning objects."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..errors import OTCError

CONV = nn.modules.conv._ConvNd
NORM = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


@dataclass
class Slice:
    """One layer's share of a group. `index[c]` lists the positions (rows or columns) of root channel c."""

    name: str
    module: nn.Module
    role: str  # "out" (producer rows), "in" (consumer columns) or "channel" (depthwise conv, norm)
    index: torch.Tensor  # (n, r) long


@dataclass
class Group:
    root: str
    n: int
    slices: list[Slice]
    stage: int = 0
    fusable: bool = True
    note: str = ""
    internal: bool = True
    layers: list[str] = field(default_factory=list)
    producers: list[str] = field(default_factory=list)  # layers whose outputs are the group's channels

    def matches(self, pattern: str) -> bool:
        return any(fnmatch.fnmatch(n, pattern) for n in [self.root, *self.producers])


def is_depthwise(m) -> bool:
    return isinstance(m, CONV) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def classifier_layer(model: nn.Module, example: torch.Tensor) -> nn.Module | None:
    """The last conv/linear that runs: its outputs are the logits and are never pruned."""
    order = []
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append(mod))
             for m in model.modules() if isinstance(m, (CONV, nn.Linear))]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return order[-1] if order else None


def stage_of(name: str) -> int | None:
    m = re.match(r"(?:.*\.)?layer(\d+)(\.|$)", name)
    return int(m.group(1)) if m else None


class GroupGraph:
    """Torch-Pruning's graph plus the conversions to and from our Slice view."""

    def __init__(self, model: nn.Module, example: torch.Tensor, exclude=(), scope: str | None = None):
        import torch_pruning as tp

        self.model = model
        self.names = {m: n for n, m in model.named_modules()}
        self.scope = scope or getattr(model, "otcompress_prune_scope", "all")
        forced = getattr(model, "otcompress_prune_scope", None)
        if forced == "internal" and self.scope != "internal":
            raise OTCError(f"{type(model).__name__} has zero-padded (option-A) shortcuts without weights; Torch-Pruning "
                           "couples them to the wrong channels, so only scope = 'internal' (block-internal channels) is supported")
        model.eval()
        with torch.enable_grad():
            self.dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
        head = classifier_layer(model, example)
        ignored = [head] if head is not None else []
        ignored += [m for n, m in model.named_modules()
                    if isinstance(m, (CONV, nn.Linear)) and any(fnmatch.fnmatch(n, p) for p in exclude)]
        roots = []
        for g in self.dg.get_all_groups(ignored_layers=ignored, root_module_types=(CONV, nn.Linear)):
            root = g[0].dep.target.module
            if is_depthwise(root):  # re-root on the layer that feeds the depthwise conv
                feeders = [it.dep.target.module for it in g if self.dg.is_out_channel_pruning_fn(it.dep.handler)
                           and isinstance(it.dep.target.module, (CONV, nn.Linear)) and not is_depthwise(it.dep.target.module)]
                if not feeders:
                    continue
                root = feeders[0]
            roots.append(root)
        self.roots = roots

    def _tp_group(self, root: nn.Module):
        pruner = self.dg.get_pruner_of_module(root)
        n = pruner.get_out_channels(root)
        return self.dg.get_pruning_group(root, pruner.prune_out_channels, list(range(n))), n

    def describe(self, root: nn.Module) -> Group:
        g, n = self._tp_group(root)
        slices, fusable, note, producers = [], True, "", 0
        for item in g:
            m = item.dep.target.module
            if not isinstance(m, nn.Module) or not list(m.parameters(recurse=False)):
                if isinstance(m, nn.Parameter):
                    fusable, note = False, "group has a bare nn.Parameter"
                continue
            idxs = torch.as_tensor(item.idxs, dtype=torch.long)
            roots = torch.as_tensor(item.root_idxs, dtype=torch.long)
            order = torch.argsort(roots * (idxs.max() + 1) + idxs)
            idxs, roots = idxs[order], roots[order]
            counts = torch.bincount(roots, minlength=n)
            if counts.min() != counts.max() or counts.min() == 0:
                fusable, note = False, f"uneven channel mapping in {self.names.get(m, '?')}"
                continue
            index = idxs.view(n, -1)
            is_out = self.dg.is_out_channel_pruning_fn(item.dep.handler)
            if is_depthwise(m) or isinstance(m, NORM):
                role = "channel"
            elif isinstance(m, (CONV, nn.Linear)):
                if isinstance(m, CONV) and m.groups > 1:
                    fusable, note = False, f"grouped conv {self.names.get(m, '?')}"
                role = "out" if is_out else "in"
                producers += role == "out"
            else:
                fusable, note = False, f"unsupported layer type {type(m).__name__}"
                continue
            slices.append(Slice(self.names.get(m, "?"), m, role, index))
        name = self.names[root]
        st = stage_of(name)
        return Group(root=name, n=n, slices=slices, stage=st if st is not None else 0, fusable=fusable, note=note,
                     internal=producers == 1, layers=sorted({s.name for s in slices}),
                     producers=[s.name for s in slices if s.role == "out"])

    def groups(self) -> list[Group]:
        out = [self.describe(r) for r in self.roots]
        if self.scope == "internal":
            out = [g for g in out if g.internal]
        return out

    def prune(self, root_name: str, keep: torch.Tensor) -> None:
        """Remove every channel of the group except `keep` (root indices); kept values stay as written."""
        root = self.model.get_submodule(root_name)
        g, n = self._tp_group(root)
        drop = sorted(set(range(n)) - set(keep.tolist()))
        if drop:
            g.prune(idxs=drop, record_history=False)
