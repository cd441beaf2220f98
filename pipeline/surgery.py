"""Module surgery shared by every stage that changes a model's structure: replacing a submodule by name,
the modules that may replace others (each with a rule to rebuild it on load), and one class-swap mechanism
(a mixin put in front of a module's own class, as ToMe patches timm blocks) that keeps state_dict keys and
structure as they were, so the changed model still loads the user's checkpoints and rebuilds from a diff."""

from __future__ import annotations

import torch.nn as nn

from .registry import Registry

# A module that replaces another one at the same name: {type name: build(spec, fresh module at that name)}.
REPLACEMENTS = Registry("module replacement")
REPLACEMENTS.register("Identity", lambda spec, fresh: nn.Identity())

_SWAPPED: dict[tuple[type, type], type] = {}


def set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted `name` (e.g. "layer1.0.bn1") by `new`."""
    parent_name, _, leaf = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, new)


def swap_class(module: nn.Module, mixin: type, prefix: str) -> nn.Module:
    """Give `module` the class (mixin, its own class): the mixin's methods (a forward) win, everything else is
    the module's own. Idempotent; the generated classes are cached, so equal modules share one class.

    Args:
        module: changed in place and returned.
        mixin: a plain class whose methods call `super()` to reach the module's own behaviour.
        prefix: the generated class is named prefix + the module's class name.
    """
    if isinstance(module, mixin):
        return module
    base = type(module)
    key = (mixin, base)
    if key not in _SWAPPED:
        _SWAPPED[key] = type(f"{prefix}{base.__name__}", (mixin, base), {"__module__": base.__module__})
    module.__class__ = _SWAPPED[key]
    return module


def original_class(module: nn.Module) -> type:
    """The module's own class under every swapped-in mixin (the class its state_dict and structure belong to)."""
    swapped = set(_SWAPPED.values())
    mixins = {mixin for mixin, _ in _SWAPPED}
    return next(c for c in type(module).__mro__ if c not in swapped and c not in mixins)


def swapped_with(module: nn.Module) -> list[type]:
    """The mixins swapped into the module's class, outermost first."""
    mixins = {mixin for mixin, _ in _SWAPPED}
    return [c for c in type(module).__mro__ if c in mixins]
