"""`ultralytics:yolov8n.yaml`, `ultralytics:yolo11n-seg.yaml` (or a path to a model YAML): ultralytics YOLO
detectors and segmenters built offline from their YAML (`args = {num_classes = N}`), weights from the recipe's
checkpoint: a state_dict (.safetensors, or a .pt that torch.load reads with weights_only=True), or a trained
ultralytics .pt, which is a whole pickled model and is loaded only where the recipe says `trusted = true`.

ultralytics (AGPL-3.0) is optional and imported only here, with its import side effects neutralised: no network
check (YOLO_OFFLINE), no pip installs (YOLO_AUTOINSTALL), its settings file in a private folder
(YOLO_CONFIG_DIR), and OMP_NUM_THREADS as it was.

The pipeline runs the model in ultralytics' export form (what `yolo export format=onnx` writes): `output0`, the
decoded boxes (xywh, input pixels) and class scores (B, 4 + classes [+ mask coefficients], anchors), and for
segmenters `output1`, the mask prototypes. NMS runs outside the graph, in `decode_detections`. The head's
final convolutions (box distribution bins, class scores, mask coefficients, prototypes) are always kept."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import OTCError
from ..surgery import swap_class
from .checkpoint import TORCH_SUFFIXES, load_weights, read_state_dict
from .source import SOURCES, Source, _call

CONF, IOU, MAX_DET = 0.001, 0.7, 300  # ultralytics' validation settings: the detections mAP is scored on


def _import():
    """ultralytics' model classes, imported with its side effects neutralised (see the module docstring)."""
    had_omp = "OMP_NUM_THREADS" in os.environ
    threads = torch.get_num_threads()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_VERBOSE", "false")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(tempfile.gettempdir()) / "otcompress-ultralytics"))
    try:
        from ultralytics.nn import tasks
    except Exception as e:  # ImportError, or a broken dependency raising at import
        raise OTCError(f"model.arch 'ultralytics:…' needs ultralytics, which does not import here ({type(e).__name__}: "
                       f"{str(e)[:200]}); install it (AGPL-3.0): pip install 'otcompress[ultralytics]'") from None
    finally:
        if not had_omp:
            os.environ.pop("OMP_NUM_THREADS", None)
        torch.set_num_threads(threads)
    return tasks


def available() -> str:
    """ultralytics' version, or why it is not usable (for `otcompress doctor`)."""
    try:
        _import()
        import ultralytics

        return ultralytics.__version__
    except OTCError as e:
        return f"not installed/usable ({str(e).split('(', 1)[-1].split(')')[0]})"


class YoloExport:
    """Mixed into the model's class: the forward ultralytics exports (head in export mode), named as its ONNX
    export names its outputs, plus NMS outside the graph."""

    def forward(self, x):
        out = super().forward(x)
        if isinstance(out, (tuple, list)):
            return {f"output{i}": t for i, t in enumerate(out)}
        return {"output0": out}

    def protected_channels(self) -> dict[str, str]:
        head = f"model.{len(self.model) - 1}"
        return {f"{head}.cv2.*.2": "box distribution bins (DFL) of the detection head",
                f"{head}.cv3.*.2": "class scores of the detection head",
                f"{head}.cv4.*.2": "mask coefficients of the segmentation head",
                f"{head}.proto.cv3.conv": "mask prototypes of the segmentation head",
                f"{head}.dfl.conv": "the DFL's fixed expectation over the distribution bins",
                f"{head}.one2one_cv2.*.2": "box distribution bins (one-to-one head)",
                f"{head}.one2one_cv3.*.2": "class scores (one-to-one head)"}

    def decode_detections(self, outputs: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Per image {boxes (xyxy input pixels), scores, labels} after class-aware NMS (conf 0.001, IoU 0.7, 300
        detections: ultralytics' validation settings)."""
        from torchvision.ops import batched_nms

        y = outputs["output0"].float()
        nc = self.model[-1].nc
        dets = []
        for p in y:  # (4 + nc [+ nm], anchors)
            xywh, cls = p[:4].T, p[4:4 + nc].T
            scores, labels = cls.max(1)
            keep = scores > CONF
            xyxy = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)[keep]
            scores, labels = scores[keep], labels[keep]
            idx = batched_nms(xyxy, scores, labels, IOU)[:MAX_DET]
            dets.append({"boxes": xyxy[idx], "scores": scores[idx], "labels": labels[idx]})
        return dets


def _yaml(name: str) -> str:
    """A model YAML ultralytics ships (`yolov8n.yaml`: the scale letter picks the size) or a path to one."""
    p = Path(name)
    if p.suffix not in (".yaml", ".yml"):
        raise OTCError(f"model.arch = 'ultralytics:{name}': expected a model YAML such as yolov8n.yaml or "
                       "yolo11n-seg.yaml (weights come from model.checkpoint)")
    return str(p) if p.is_file() else name


def _same_anchors(head, args):
    """The head caches its anchors by the whole input shape; they depend on the feature maps' size only, so a
    new batch size reuses them (recomputing them inside torch.export would leave traced tensors behind)."""
    s = args[0][0].shape
    if head.shape is not None and tuple(head.shape[2:]) == tuple(s[2:]):
        head.shape = s


class Ultralytics(Source):
    def build(self, name, args):
        tasks = _import()
        args = dict(args)
        nc = args.pop("num_classes", None)
        if args:
            raise OTCError(f"model.args for 'ultralytics:{name}': unknown {sorted(args)}; expected num_classes")
        cfg = _yaml(name)
        try:
            task = tasks.guess_model_task(cfg)
        except Exception as e:
            raise OTCError(f"model.arch = 'ultralytics:{name}': ultralytics cannot read it ({type(e).__name__}: "
                           f"{str(e)[:200]})") from None
        classes = {"detect": tasks.DetectionModel, "segment": tasks.SegmentationModel}
        if task not in classes:
            raise OTCError(f"model.arch = 'ultralytics:{name}': a {task} model; otcompress takes ultralytics detect "
                           "and segment models")
        kw = {"nc": nc} if nc is not None else {}
        return _call(f"ultralytics:{name}", lambda: classes[task](cfg, verbose=False, **kw), {})

    def load(self, model, checkpoint, trusted):
        path = Path(checkpoint)
        if path.suffix in TORCH_SUFFIXES:
            try:
                torch.load(str(path), map_location="cpu", weights_only=True)
            except Exception:
                if not trusted:
                    raise OTCError(f"{path}: a pickle (a trained ultralytics .pt holds the whole model, and loading "
                                   "one runs code); load it only if you trust it: set model.trusted = true in the "
                                   "recipe, or give a state_dict (.safetensors)") from None
                ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
                net = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else ckpt
                if not isinstance(net, nn.Module):
                    raise OTCError(f"{path}: expected an ultralytics checkpoint ({{'model': …}}), got {type(ckpt).__name__}")
                load_weights(model, {k: v.float() for k, v in net.float().state_dict().items()}, str(path))
                return model
        load_weights(model, read_state_dict(path), str(path))
        return model

    def adapt(self, model, example):
        head = model.model[-1]
        head.export, head.dynamic = True, False
        head.register_forward_pre_hook(_same_anchors)
        swap_class(model, YoloExport, "")
        if example is not None:  # the anchors of this input size, computed once, outside any export
            with torch.no_grad():
                model(example)
        return model


SOURCES.register("ultralytics", Ultralytics())
