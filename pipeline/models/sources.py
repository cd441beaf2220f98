"""The registered model sources: torchvision, timm and Hugging Face (local directories only, offline)."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path


from ..errors import OTCError
from ..registry import suggest
from .source import SOURCES, Source, _call
from ..surgery import original_class
from .adapt import logits_only


def _library(name: str, extra: str):
    try:
        return importlib.import_module(name)
    except Exception as e:  # ImportError, or a torch/torchvision build mismatch raising at import
        raise OTCError(f"model.arch needs {name}, which does not import here ({type(e).__name__}: {str(e)[:200]}); "
                       f"install it: pip install 'otcompress[{extra}]'") from None


class TorchVision(Source):
    """`torchvision:NAME`: torchvision.models.get_model(NAME, weights=None, **args) (and weights_backbone=None for
    detection and segmentation models); weights come from the recipe's checkpoint (a torchvision state_dict
    .pth), never from the network. Detectors run as their dense core (models/detection.py)."""

    def _kind(self, name) -> str:
        tvm = _library("torchvision", "timm").models
        for kind in ("detection", "segmentation"):
            if name in tvm.list_models(module=getattr(tvm, kind)):
                return kind
        return "classification"

    def build(self, name, args):
        tvm = _library("torchvision", "timm").models
        if name not in tvm.list_models():
            raise OTCError(f"model.arch = 'torchvision:{name}': torchvision has no model {name!r}"
                           + suggest(name, tvm.list_models()))
        if any(k in args for k in ("weights", "pretrained", "weights_backbone", "pretrained_backbone")):
            raise OTCError(f"model.args for 'torchvision:{name}': weights are never downloaded; give a state_dict "
                           "file as model.checkpoint instead of 'weights'/'weights_backbone'")
        extra = {} if self._kind(name) == "classification" else {"weights_backbone": None}
        return _call(f"torchvision:{name}", lambda **kw: tvm.get_model(name, weights=None, **extra, **kw), args)

    def adapt(self, model, example):
        if type(model).__module__.startswith("torchvision.models.detection"):
            from .detection import adapt

            return adapt(model, example, f"torchvision:{type(model).__name__}")
        return model


SOURCES.register("torchvision", TorchVision())


class Timm(Source):
    """`timm:NAME`: timm.create_model(NAME, pretrained=False, **args); weights from the recipe's checkpoint."""

    def build(self, name, args):
        timm = _library("timm", "timm")
        if not timm.is_model(name):
            raise OTCError(f"model.arch = 'timm:{name}': timm has no model {name!r}" + suggest(name, timm.list_models()))
        if args.get("pretrained"):
            raise OTCError(f"model.args for 'timm:{name}': pretrained weights are never downloaded; give a state_dict "
                           "file as model.checkpoint")
        return _call(f"timm:{name}", lambda **kw: timm.create_model(name, pretrained=False, **kw), args)


SOURCES.register("timm", Timm())


def _offline():
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(k, "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        import transformers

        transformers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
    except Exception:  # not installed: the caller says so
        pass


def _hf_class(transformers, config):
    """The class the directory was saved from (config.architectures), e.g. DeiTForImageClassificationWithTeacher;
    else the image-classification auto class for its model type."""
    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    return transformers.AutoModelForImageClassification


class HuggingFace(Source):
    """`hf:DIR`: a local directory written by save_pretrained (config.json + model.safetensors), loaded with
    local_files_only. The model is adapted to return its logits tensor. compressed.safetensors stores the
    config, so the compressed model rebuilds without DIR."""

    def available(self, name):
        return (Path(name) / "config.json").is_file()

    def build(self, name, args):
        _offline()
        transformers = _library("transformers", "transformers")
        path = Path(name)
        if not (path / "config.json").is_file():
            raise OTCError(f"model.arch = 'hf:{name}': expected a local Hugging Face model directory with config.json "
                           "(as save_pretrained writes it); nothing is downloaded")
        try:
            config = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
            cls = _hf_class(transformers, config)
            model = cls.from_pretrained(str(path), local_files_only=True, **args)
        except Exception as e:
            raise OTCError(f"model.arch = 'hf:{name}': transformers cannot load it: {type(e).__name__}: {str(e)[:300]}") from None
        return logits_only(model)

    def facts(self, name, args, model):
        return {"class": original_class(model).__name__, "config": json.loads(model.config.to_json_string())}

    def rebuild(self, name, args, facts):
        _offline()
        transformers = _library("transformers", "transformers")
        cfg = dict(facts["config"])
        config = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        cls = getattr(transformers, facts["class"])
        return logits_only(cls(config))


SOURCES.register("hf", HuggingFace())
