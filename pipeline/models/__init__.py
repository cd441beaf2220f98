"""Where models come from. `arch` in a recipe is a built-in name (`cifar_resnet56`), `SOURCE:NAME` for a
registered source (`torchvision:resnet50`, `timm:vit_small_patch16_224`, `hf:path/to/dir`,
`ultralytics:yolov8n.yaml`) or a Python factory `package.module:function`. Every stage, export and check
sees one nn.Module that maps an image batch to a tree of tensors with static shapes (otcompress.outputs);
sources adapt what their models return where needed (Hugging Face classifiers to their logits, detectors to
their dense raw head outputs, decoded outside the graph)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..errors import OTCError
from ..outputs import describe, flatten
from .source import SEED, SOURCES, BuiltIn, PythonFactory, Source, _split
from . import sources as _sources  # noqa: F401  (torchvision, timm, Hugging Face register themselves)
from . import ultralytics as _ultralytics  # noqa: F401  (registers `ultralytics:`; imports ultralytics only when used)

__all__ = ["SEED", "SOURCES", "Source", "build_model", "check_outputs", "load", "model_facts", "original_model", "source_of"]


def source_of(arch: str) -> tuple[Source, str]:
    """The source a recipe's arch names and the name it gives it."""
    source, name = _split(arch)
    if source is None:
        source = PythonFactory() if ":" in arch else BuiltIn()
    return source, name


def _example(input_shape) -> torch.Tensor | None:
    return torch.zeros((1, *input_shape[1:])) if input_shape else None


def build_model(arch: str, args: dict | None = None, facts: dict | None = None,
                input_shape: list[int] | None = None) -> nn.Module:
    """The architecture `arch` names, adapted as the pipeline runs it, in eval mode. With `facts` (from
    compressed.safetensors) the source rebuilds it without its original files.

    Raises:
        OTCError: an unknown name, arguments the factory rejects, a library that does not import.
    """
    args = dict(args or {})
    source, name = source_of(arch)
    model = source.rebuild(name, args, facts) if facts is not None else source.build(name, args)
    return source.adapt(model.eval(), _example(input_shape)).eval()


def model_facts(arch: str, args: dict, model: nn.Module) -> dict | None:
    source, name = source_of(arch)
    return source.facts(name, args, model)


def failing_layer(model: nn.Module, x: torch.Tensor) -> str:
    """" in layer NAME (Class)": the innermost module whose forward was running when the model raised on x."""
    names = {m: n for n, m in model.named_modules()}
    stack, hit = [], []

    def pre(m, args):
        stack.append(m)

    def post(m, args, out):
        stack.pop()

    hooks = [m.register_forward_pre_hook(pre) for m in names] + [m.register_forward_hook(post) for m in names]
    try:
        with torch.no_grad():
            model(x)
    except Exception:
        hit = list(stack)
    finally:
        for h in hooks:
            h.remove()
    inner = hit[-1] if hit else None
    return f" in layer {names[inner]} ({type(inner).__name__})" if inner is not None and names[inner] else ""


def where(e: BaseException) -> str:
    """The raising line of an exception without a message (a bare assert): file:line and the code."""
    import traceback

    tb = [f for f in traceback.extract_tb(e.__traceback__) if f"{Path('torch')}/" not in f.filename.replace("\\", "/")]
    if not tb:
        return "(no message)"
    f = tb[-1]  # the model's own line, not torch's assert helper
    return f"{Path(f.filename).name}:{f.lineno}: {f.line}"


def check_outputs(model: nn.Module, example: torch.Tensor, arch: str) -> nn.Module:
    """A model must map an image batch to tensors whose first dimension is the batch and whose shapes do not
    depend on the images' content (a second batch of two other images checks it).

    Raises:
        OTCError: naming the model, the output and what was wrong.
    """
    def run(x):
        try:
            with torch.no_grad():
                out = model(x)
        except OTCError:
            raise
        except Exception as e:
            if x is not example:  # the model's own bug at batch 2: measuring the model reports it, as a bug
                return None
            raise OTCError(f"model {arch!r} does not run on an input of shape {list(x.shape)} "
                           f"(model.input_shape){failing_layer(model, x)}: {type(e).__name__}: {str(e)[:300] or where(e)}") from None
        try:
            flat = flatten(out)
        except TypeError as e:
            raise OTCError(f"model {arch!r} returns {describe(out)} holding {e}; otcompress needs tensors (a tensor, or "
                           "a tuple, list or dict of them): wrap the model in a module whose forward returns those") from None
        if not flat:
            raise OTCError(f"model {arch!r} returns {describe(out)} without any tensor")
        return flat

    first = run(example)
    second = run(torch.randn((2, *example.shape[1:]), generator=torch.Generator().manual_seed(0)))
    if second is None:
        return model
    for k, v in second.items():
        if v.dim() == 0 or v.shape[0] != 2:
            raise OTCError(f"model {arch!r}: output {k!r} has shape {list(v.shape)} for a batch of 2; every output "
                           "needs the batch as its first dimension (per-image lists such as post-NMS detections "
                           "cannot be exported with static shapes)")
    changed = [k for k in first if k not in second or tuple(first[k].shape[1:]) != tuple(second[k].shape[1:])]
    changed += [k for k in second if k not in first]
    if changed:
        k = changed[0]
        shapes = [list(d[k].shape) if k in d else "absent" for d in (first, second)]
        raise OTCError(f"model {arch!r}: output {k!r} changes shape with the images' content ({shapes[0]} vs "
                       f"{shapes[1]}); outputs such as post-NMS detections cannot be exported with static shapes")
    return model


def load(model_cfg: dict) -> nn.Module:
    """The recipe's [model]: built, checkpoint loaded (strict key check), adapted, outputs checked, eval mode."""
    torch.manual_seed(SEED)  # a model without checkpoint is still the same model on every run and every rank
    source, name = source_of(model_cfg["arch"])
    model = source.build(name, dict(model_cfg.get("args") or {}))
    if model_cfg.get("checkpoint"):
        model = source.load(model, model_cfg["checkpoint"], bool(model_cfg.get("trusted")))
    example = torch.zeros((1, *model_cfg["input_shape"][1:]))
    model = source.adapt(model.eval(), example)
    return check_outputs(model.eval(), example, model_cfg["arch"]).eval()


def original_model(meta: dict, checkpoint: str | None = None) -> nn.Module | None:
    """The uncompressed model a compressed.safetensors came from, if its weights can still be found: the
    recorded checkpoint (or one given instead), else the model its source builds (a Hugging Face directory
    carries its weights; a model without checkpoint was built from seed 0). None where they are gone."""
    from pathlib import Path

    orig = meta.get("original") or {}
    if checkpoint and not Path(checkpoint).is_file():
        raise OTCError(f"{checkpoint}: file not found")
    ckpt = checkpoint or orig.get("checkpoint")
    source, name = source_of(meta["arch"])
    shape = meta.get("input_shape")
    args = dict(meta.get("args") or {})
    if ckpt:
        if not Path(ckpt).is_file():
            return None
        model = source.rebuild(name, args, meta["facts"]) if meta.get("facts") is not None else source.build(name, args)
        model = source.load(model.eval(), str(ckpt), bool(orig.get("trusted")))
        return source.adapt(model.eval(), _example(shape)).eval()
    if hasattr(source, "available") and not source.available(name):
        return None
    torch.manual_seed(orig.get("seed", 0))
    return build_model(meta["arch"], args, input_shape=shape)
