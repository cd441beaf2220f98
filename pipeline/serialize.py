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

from .channels import fold_bn  # noqa: F401  (registers the replacements a channel stage leaves: FoldedNormAct)
from .artifacts import atomic_write_bytes
from .errors import OTCError
from .models import build_model
from .models.checkpoint import load_weights, read_state_dict
from .surgery import REPLACEMENTS, original_class, set_submodule
from .tokens.patch import apply_token_reduction

FORMAT = "otcompress/3"
SIMPLE = (int, float, bool, str, type(None))


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
    if original_class(m) is not original_class(fresh):
        name = type(m).__name__
        if name not in REPLACEMENTS:
            raise OTCError(f"cannot record a {name} that replaced a {type(fresh).__name__}: no rebuild rule "
                           "(register one in otcompress.surgery.REPLACEMENTS)")
        return {"replace": name}
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


def save_compressed(path: str | Path, model: nn.Module, meta: dict, fresh_copy: nn.Module | None = None) -> None:
    """Write compressed.safetensors atomically: the weights, and in the metadata `meta` plus how every module
    differs from a fresh build (from meta's arch, else `fresh_copy`: the uncompressed model)."""
    from safetensors.torch import save

    fresh = build_model(meta["arch"], meta.get("args"), meta.get("facts"), meta.get("input_shape")) if meta["arch"] \
        else fresh_copy
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


def load_compressed(path: str | Path, model: nn.Module | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the compressed model from compressed.safetensors alone: (model in eval mode, metadata). `model`,
    a freshly built original, is needed only where the run recorded no model source (it is changed in place)."""
    meta = read_meta(path)
    if model is None and not meta["arch"]:
        raise OTCError(f"{path}: compressed from an in-memory model without a source; pass a freshly built model of "
                       "the same architecture: otcompress.load(path, model=...)")
    if model is None:
        model = build_model(meta["arch"], meta.get("args"), meta.get("facts"), meta.get("input_shape"))
    apply_diff(model, meta["modules"])
    if meta.get("tokens"):
        apply_token_reduction(model, meta["tokens"])
    load_weights(model, read_state_dict(path), str(path))
    return model.eval(), meta

