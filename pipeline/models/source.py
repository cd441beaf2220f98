"""The Source interface and registry, and the sources that need no library: the built-in zoo and
`package.module:factory`. Each library's source lives in its own module (sources.py) and registers itself."""

from __future__ import annotations

import importlib

import torch
import torch.nn as nn

from ..errors import OTCError
from ..registry import Registry
from .checkpoint import load_weights, read_state_dict
from .zoo import ZOO


class Source:
    """One family of model names. `build` makes the model a recipe names (with the weights the source
    itself carries, if any); `facts` returns what `rebuild` needs later to make the same architecture
    again without the original files (stored in compressed.safetensors)."""

    def build(self, name: str, args: dict) -> nn.Module:
        raise NotImplementedError

    def load(self, model: nn.Module, checkpoint: str, trusted: bool) -> nn.Module:
        """Load the recipe's checkpoint into the built model (a state_dict file; a source may read its own
        formats, e.g. ultralytics' whole-model pickles where the recipe says `trusted = true`)."""
        load_weights(model, read_state_dict(checkpoint), checkpoint)
        return model

    def adapt(self, model: nn.Module, example: torch.Tensor | None) -> nn.Module:
        """The model as the pipeline runs it (dense raw outputs for detectors); identity by default. Applied
        after the checkpoint is loaded, and again on rebuild."""
        return model

    def facts(self, name: str, args: dict, model: nn.Module) -> dict | None:
        return None

    def rebuild(self, name: str, args: dict, facts: dict | None) -> nn.Module:
        return self.build(name, args)


SOURCES = Registry("model source")
SEED = 0  # models built without a checkpoint are seeded, so `validate` can rebuild the original


def _split(arch: str) -> tuple[Source | None, str]:
    prefix, sep, rest = arch.partition(":")
    if sep and prefix in SOURCES:
        return SOURCES[prefix], rest
    return None, arch


def _call(arch: str, fn, args: dict) -> nn.Module:
    try:
        model = fn(**(args or {}))
    except OTCError:
        raise
    except TypeError as e:
        raise OTCError(f"model.args for {arch!r}: {e}") from None
    except Exception as e:  # a factory rejecting its arguments raises anything (ValueError, KeyError, AssertionError)
        raise OTCError(f"model.arch = {arch!r} with args {args or {}}: the factory failed: {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise OTCError(f"model.arch = {arch!r}: factory returned {type(model).__name__}, expected a torch.nn.Module")
    return model


class PythonFactory(Source):
    """`package.module:function` (the module must be importable: installed, or on PYTHONPATH)."""

    def build(self, name, args):
        mod_name, _, attr = name.partition(":")
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as e:
            raise OTCError(f"model.arch = {name!r}: cannot import module {mod_name!r}: {e}") from None
        fn = getattr(mod, attr, None)
        if not callable(fn):
            raise OTCError(f"model.arch = {name!r}: module {mod_name!r} has no callable {attr!r}")
        return _call(name, fn, args)


class BuiltIn(Source):
    def build(self, name, args):
        if name not in ZOO:
            raise OTCError(f"model.arch = {name!r}: unknown model{ZOO.hint(name)}; built-in: {', '.join(ZOO)}, or "
                           f"{', '.join(f'{s}:NAME' for s in SOURCES)}, or 'package.module:factory'")
        return _call(name, ZOO[name], args)
