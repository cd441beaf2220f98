"""Built-in models (tests cannot use torchvision/timm here) and user factories as 'package.module:factory'."""

from __future__ import annotations

import importlib
from typing import Callable

import torch.nn as nn

from ..errors import OTCError
from .cifar_resnet import cifar_resnet18, cifar_resnet20, cifar_resnet32, cifar_resnet44, cifar_resnet56
from .digits import digits_cnn
from .mobilenetv2 import cifar_mobilenetv2
from .resnet import resnet18, resnet50
from .vgg import cifar_vgg11_bn
from .vit import vit

MODELS: dict[str, Callable[..., nn.Module]] = {
    "cifar_resnet20": cifar_resnet20,
    "cifar_resnet32": cifar_resnet32,
    "cifar_resnet44": cifar_resnet44,
    "cifar_resnet56": cifar_resnet56,
    "cifar_resnet18": cifar_resnet18,
    "cifar_vgg11_bn": cifar_vgg11_bn,
    "cifar_mobilenetv2": cifar_mobilenetv2,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "vit": vit,
    "digits_cnn": digits_cnn,
}


def resolve_factory(arch: str) -> Callable[..., nn.Module]:
    if arch in MODELS:
        return MODELS[arch]
    if ":" in arch:
        mod_name, _, attr = arch.partition(":")
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as e:
            raise OTCError(f"model.arch = {arch!r}: cannot import module {mod_name!r}: {e}") from None
        fn = getattr(mod, attr, None)
        if not callable(fn):
            raise OTCError(f"model.arch = {arch!r}: module {mod_name!r} has no callable {attr!r}")
        return fn
    import difflib

    hint = difflib.get_close_matches(arch, list(MODELS), n=1)
    extra = f" — did you mean '{hint[0]}'?" if hint else ""
    raise OTCError(f"model.arch = {arch!r}: unknown model{extra}; built-in: {', '.join(MODELS)}, or 'package.module:factory'")


def build_model(arch: str, args: dict | None = None) -> nn.Module:
    fn = resolve_factory(arch)
    try:
        model = fn(**(args or {}))
    except TypeError as e:
        raise OTCError(f"model.args for {arch!r}: {e}") from None
    if not isinstance(model, nn.Module):
        raise OTCError(f"model.arch = {arch!r}: factory returned {type(model).__name__}, expected a torch.nn.Module")
    return model.eval()
