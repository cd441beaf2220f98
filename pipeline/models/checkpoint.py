"""Checkpoint loading: safetensors (any float dtype -> float32) or torch pickles with weights_only=True.
Missing, unexpected and mis-shaped keys are reported by name, never ignored."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import OTCError

TORCH_SUFFIXES = {".pt", ".pth", ".th", ".bin", ".ckpt"}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise OTCError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise OTCError(f"{path}: not a readable safetensors file ({e})") from None
    elif path.suffix in TORCH_SUFFIXES:
        try:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # pickle errors come in many types
            raise OTCError(f"{path}: cannot be read with torch.load(weights_only=True): {e}") from None
        for _ in range(3):  # nested {"state_dict": ...} / {"model": ...}
            if isinstance(sd, dict) and not any(isinstance(v, torch.Tensor) for v in sd.values()):
                inner = sd.get("state_dict", sd.get("model"))
                if not isinstance(inner, dict):
                    break
                sd = inner
    else:
        raise OTCError(f"{path}: unknown checkpoint type {path.suffix!r}; expected .safetensors, .pt, .pth, .th, .bin or .ckpt")
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise OTCError(f"{path}: expected a dict of tensors (optionally under 'state_dict' or 'model')")
    out = {}
    for k, v in sd.items():
        while k.startswith("module."):
            k = k[len("module."):]
        out[k] = v.float() if v.is_floating_point() else v
    return out


def _names(keys, n=8):
    keys = sorted(keys)
    more = f" … and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_weights(model: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} (checkpoint {tuple(sd[k].shape)}, model {tuple(own[k].shape)})"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_names(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches: {_names(shapes, 4)}")
    if problems:
        raise OTCError(f"{source}: does not fit the model: " + "; ".join(problems))
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise OTCError(f"{source}: {len(bad)} tensor(s) hold NaN or Inf values (first: {', '.join(sorted(bad)[:3])}); "
                       "a compressed model of them could not be validated")
    full = OrderedDict((k, sd.get(k, own[k])) for k in own)
    full._metadata = getattr(own, "_metadata", None)  # module versions (torchvision's MNASNet checks its own)
    model.load_state_dict(full, strict=True)
