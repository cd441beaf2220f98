"""Where models come from. `arch` in a recipe is a built-in name (`cifar_resnet56`), `SOURCE:NAME` for a
registered source (`torchvision:resnet50`, `timm:vit_small_patch16_224`, `hf:path/to/dir`) or a Python
factory `package.module:function`. Every stage, export and check sees one nn.Module that maps an image
batch to one logits tensor; sources whose models return more (Hugging Face) adapt them here."""

from __future__ import annotations

import importlib
from typing import Any

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


def build_model(arch: str, args: dict | None = None, facts: dict | None = None, logits: bool = False) -> nn.Module:
    """The architecture `arch` names, in eval mode. With `facts` (from compressed.safetensors) the source
    rebuilds it without its original files; `logits` adapts a model that returns {"logits": ...}."""
    from .adapt import logits_only

    args = dict(args or {})
    source, name = _split(arch)
    if source is None:
        source = PythonFactory() if ":" in arch else BuiltIn()
    model = source.rebuild(name, args, facts) if facts is not None else source.build(name, args)
    return (logits_only(model) if logits else model).eval()


def model_facts(arch: str, args: dict, model: nn.Module) -> dict | None:
    source, name = _split(arch)
    return source.facts(name, args, model) if source is not None else None


def check_logits(model: nn.Module, example: torch.Tensor, arch: str) -> nn.Module:
    """A model must map an image batch to one logits tensor. Outputs with a `logits` field (dicts, Hugging
    Face ModelOutput) are adapted; anything else is refused with what was returned."""
    from .adapt import logits_only

    try:
        with torch.no_grad():
            out = model(example)
    except OTCError:
        raise
    except Exception as e:
        raise OTCError(f"model {arch!r} does not run on an input of shape {list(example.shape)} "
                       f"(model.input_shape): {type(e).__name__}: {str(e)[:300]}") from None
    if isinstance(out, torch.Tensor):
        if out.dim() != 2 or out.shape[0] != example.shape[0]:
            raise OTCError(f"model {arch!r} returns a tensor of shape {list(out.shape)}; expected logits of shape "
                           f"[batch, classes]")
        return model
    if _logits_of(out) is not None:
        return check_logits(logits_only(model), example, arch)
    raise OTCError(f"model {arch!r} returns {_describe(out)}; otcompress needs one logits tensor [batch, classes]: "
                   "wrap the model in a module whose forward returns the logits")


def _logits_of(out: Any):
    if isinstance(out, dict) or hasattr(out, "keys"):
        v = out.get("logits") if hasattr(out, "get") else None
        return v if isinstance(v, torch.Tensor) else None
    return None


def _describe(out: Any) -> str:
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)} values"
    if isinstance(out, dict):
        return f"a dict with keys {sorted(out)[:6]}"
    return f"a {type(out).__name__}"


def load(model_cfg: dict) -> nn.Module:
    """The recipe's [model]: built, checkpoint loaded (strict key check), adapted to logits, in eval mode."""
    torch.manual_seed(SEED)  # a model without checkpoint is still the same model on every run and every rank
    model = build_model(model_cfg["arch"], model_cfg.get("args"))
    if model_cfg.get("checkpoint"):
        load_weights(model, read_state_dict(model_cfg["checkpoint"]), model_cfg["checkpoint"])
    example = torch.zeros((1, *model_cfg["input_shape"][1:]))
    return check_logits(model, example, model_cfg["arch"]).eval()


def original_model(meta: dict, checkpoint: str | None = None) -> nn.Module | None:
    """The uncompressed model a compressed.safetensors came from, if its weights can still be found: the
    recorded checkpoint (or one given instead), else the model its source builds (a Hugging Face directory
    carries its weights; a model without checkpoint was built from seed 0). None where they are gone."""
    from pathlib import Path

    orig = meta.get("original") or {}
    if checkpoint and not Path(checkpoint).is_file():
        raise OTCError(f"{checkpoint}: file not found")
    ckpt = checkpoint or orig.get("checkpoint")
    if ckpt:
        if not Path(ckpt).is_file():
            return None
        model = build_model(meta["arch"], meta.get("args"), meta.get("facts"), logits=meta.get("logits_adapter", False))
        load_weights(model, read_state_dict(ckpt), str(ckpt))
        return model.eval()
    source, name = _split(meta["arch"])
    if source is not None and hasattr(source, "available") and not source.available(name):
        return None
    torch.manual_seed(orig.get("seed", 0))
    return build_model(meta["arch"], meta.get("args"), logits=meta.get("logits_adapter", False))


# the sources; each lives in its own module and imports its library only when used
from . import sources as _sources  # noqa: E402,F401
