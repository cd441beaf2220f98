"""compressed.safetensors: weights plus, in the safetensors metadata, what rebuilds the shrunk model
without the recipe: the model source and its args (and facts such as a Hugging Face config), how every
module differs from a freshly built one, and the token-reduction plan. A pruned state_dict alone would not
load into the dense net.

Module differences are recorded generically, so any layer a stage can change rebuilds: the shapes of its
parameters and buffers (a PReLU's slopes, a layer scale, a norm's affine parameters) and its simple
attributes that changed (channel counts, normalized_shape, num_groups). A module replaced by another type
(BatchNorm folded away) is recorded as its replacement, rebuilt from REPLACEMENTS."""

from __future__ import annotations

import json
from pathlib import Path
import torch
import torch.nn as nn

from .artifacts import atomic_write_bytes
from .errors import OTCError
from .registry import Registry

FORMAT = "otcompress/2"
SIMPLE = (int, float, bool, str, type(None))

# A module that replaces another one at the same name: {type name: build(spec, fresh module at that name)}.
REPLACEMENTS = Registry("module replacement")
REPLACEMENTS.register("Identity", lambda spec, fresh: nn.Identity())


def set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, new)


def _own_class(m: nn.Module) -> type:
    from .tokens.patch import original_class

    return original_class(m)


def _simple(v) -> bool:
    return isinstance(v, SIMPLE) or (isinstance(v, (tuple, list)) and all(isinstance(x, SIMPLE) for x in v))


def _attrs(m: nn.Module) -> dict:
    return {k: v for k, v in vars(m).items() if not k.startswith("_") and k != "training" and _simple(v)}


def _tensors(m: nn.Module) -> dict:
    out = {f"param:{k}": list(v.shape) for k, v in m._parameters.items() if v is not None}
    out.update({f"buffer:{k}": list(v.shape) for k, v in m._buffers.items() if v is not None})
    return out


def module_diff(m: nn.Module, fresh: nn.Module) -> dict | None:
    """How module m differs from the fresh one at the same name (None: not at all)."""
    if _own_class(m) is not _own_class(fresh):
        spec = getattr(m, "otcompress_spec", None)
        name = type(m).__name__
        if name not in REPLACEMENTS:
            raise OTCError(f"cannot record a {name} that replaced a {type(fresh).__name__}: no rebuild rule")
        return {"replace": name, **(spec() if callable(spec) else {})}
    d = {}
    mine, theirs = _tensors(m), _tensors(fresh)
    shapes = {k: v for k, v in mine.items() if theirs.get(k) != v}
    if shapes:
        d["shapes"] = shapes
    fa = _attrs(fresh)
    attrs = {k: v for k, v in _attrs(m).items() if k in fa and fa[k] != v}
    if attrs:
        d["attrs"] = attrs
    return d or None


def structure_diff(model: nn.Module, fresh: nn.Module) -> dict[str, dict]:
    fresh_mods = dict(fresh.named_modules())
    diff = {}
    for name, m in model.named_modules():
        if name in fresh_mods:
            d = module_diff(m, fresh_mods[name])
            if d:
                diff[name] = d
    return diff


def apply_diff(model: nn.Module, diff: dict[str, dict]) -> None:
    """Reshape a fresh model as recorded (values come from the state_dict afterwards)."""
    from .channels import fold_bn  # noqa: F401  (registers the norm-activation replacements)

    for name in sorted(diff, key=lambda n: n.count(".")):  # parents first: a replacement drops its children
        d = diff[name]
        try:
            m = model.get_submodule(name)
        except AttributeError:
            raise OTCError(f"recorded module {name!r} does not exist in the rebuilt model (another version of it?)") from None
        if "replace" in d:
            set_submodule(model, name, REPLACEMENTS[d["replace"]](d, m))
            continue
        for k, v in d.get("attrs", {}).items():
            setattr(m, k, tuple(v) if isinstance(getattr(m, k, None), tuple) else v)
        for key, shape in d.get("shapes", {}).items():
            kind, _, attr = key.partition(":")
            t = torch.empty(shape)
            if kind == "param":
                setattr(m, attr, nn.Parameter(t))
            else:
                m._buffers[attr] = t


def save_compressed(path: str | Path, model: nn.Module, meta: dict) -> None:
    from safetensors.torch import save

    from .models import build_model

    fresh = build_model(meta["arch"], meta.get("args"), meta.get("facts"))
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
    try:
        meta = json.loads(md["otcompress"])
    except json.JSONDecodeError as e:
        raise OTCError(f"{path}: its otcompress metadata is not valid JSON ({e})") from None
    if meta.get("format") != FORMAT:
        raise OTCError(f"{path}: written in format {meta.get('format')!r}; this otcompress reads {FORMAT!r} "
                       "(run the recipe again)")
    return meta


def load_compressed(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild the compressed model from compressed.safetensors alone."""
    from .models import build_model
    from .models.checkpoint import load_weights, read_state_dict

    meta = read_meta(path)
    model = build_model(meta["arch"], meta.get("args"), meta.get("facts"))
    apply_diff(model, meta["modules"])
    if meta.get("tokens"):
        from .tokens.patch import apply_token_reduction

        apply_token_reduction(model, meta["tokens"])
    load_weights(model, read_state_dict(path), str(path))
    return model.eval(), meta

