"""compressed.safetensors: weights plus, in the safetensors metadata, what rebuilds the shrunk model
without the recipe: the factory and its args, the shapes of every module that differs from a freshly
built one, and the token-reduction plan. A pruned state_dict alone would not load into the dense net."""

from __future__ import annotations

import json
from pathlib import Path

import torch.nn as nn

from .artifacts import atomic_write_bytes
from .errors import OTCError

FORMAT = "otcompress/1"


def module_spec(m: nn.Module) -> dict:
    if isinstance(m, nn.modules.conv._ConvNd):
        return {"type": type(m).__name__, "in": m.in_channels, "out": m.out_channels, "kernel": list(m.kernel_size),
                "stride": list(m.stride), "padding": list(m.padding) if not isinstance(m.padding, str) else m.padding,
                "dilation": list(m.dilation), "groups": m.groups, "bias": m.bias is not None, "padding_mode": m.padding_mode}
    if isinstance(m, nn.Linear):
        return {"type": "Linear", "in": m.in_features, "out": m.out_features, "bias": m.bias is not None}
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return {"type": type(m).__name__, "num_features": m.num_features, "eps": m.eps, "momentum": m.momentum,
                "affine": m.affine, "track_running_stats": m.track_running_stats}
    if isinstance(m, nn.LayerNorm):
        return {"type": "LayerNorm", "shape": list(m.normalized_shape), "eps": m.eps, "affine": m.elementwise_affine}
    if isinstance(m, nn.Identity):
        return {"type": "Identity"}
    return {"type": type(m).__name__}


def build_from_spec(s: dict) -> nn.Module:
    t = s["type"]
    if t in ("Conv1d", "Conv2d", "Conv3d"):
        return getattr(nn, t)(s["in"], s["out"], s["kernel"], s["stride"], s["padding"], s["dilation"], s["groups"],
                              s["bias"], s["padding_mode"])
    if t == "Linear":
        return nn.Linear(s["in"], s["out"], s["bias"])
    if t in ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d"):
        return getattr(nn, t)(s["num_features"], s["eps"], s["momentum"], s["affine"], s["track_running_stats"])
    if t == "LayerNorm":
        return nn.LayerNorm(s["shape"], s["eps"], s["affine"])
    if t == "Identity":
        return nn.Identity()
    raise OTCError(f"cannot rebuild a module of type {t!r}")


def set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, new)


def structure_diff(model: nn.Module, fresh: nn.Module) -> dict[str, dict]:
    """Specs of the modules whose type or shape the stages changed."""
    fresh_mods = dict(fresh.named_modules())
    diff = {}
    for name, m in model.named_modules():
        if not name or name not in fresh_mods:
            continue
        s = module_spec(m)
        if s != module_spec(fresh_mods[name]):
            diff[name] = s
    return diff


def save_compressed(path: str | Path, model: nn.Module, meta: dict) -> None:
    from safetensors.torch import save

    from .zoo import build_model

    fresh = build_model(meta["arch"], meta.get("args"))
    meta = dict(meta, format=FORMAT, modules=structure_diff(model, fresh))
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, save(sd, metadata={"otcompress": json.dumps(meta)}))


def read_meta(path: str | Path) -> dict:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise OTCError(f"{path}: file not found")
    try:
        with safe_open(str(path), "pt") as f:
            md = f.metadata() or {}
    except Exception as e:
        raise OTCError(f"{path}: not a readable safetensors file ({e})") from None
    if "otcompress" not in md:
        raise OTCError(f"{path}: has no otcompress metadata; expected a compressed.safetensors written by 'otcompress run'")
    return json.loads(md["otcompress"])


def load_compressed(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the compressed model from compressed.safetensors alone."""
    from .checkpoint import load_weights, read_state_dict
    from .zoo import build_model

    meta = read_meta(path)
    model = build_model(meta["arch"], meta.get("args"))
    for name, spec in meta["modules"].items():
        set_submodule(model, name, build_from_spec(spec))
    if meta.get("tokens"):
        from .tokens.patch import apply_token_reduction

        apply_token_reduction(model, meta["tokens"])
    load_weights(model, read_state_dict(path), str(path))
    return model.eval(), meta
