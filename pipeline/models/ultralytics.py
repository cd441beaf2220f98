"""`ultralytics:yolov8n.yaml`, `ultralytics:yolo11n-seg.yaml` (or a path to a model YAML): ultralytics YOLO
detectors and segmenters built offline from their YAML (`args = {num_classes = N}`), weights from the recipe's
checkpoint: a state_dict (.safetensors, or a .pt that torch.load reads with weights_only=True), or a trained
ultralytics .pt, which is a whole pickled model and is loaded only where the recipe says `trusted = true`.

ultralytics (AGPL-3.0) is optional and imported only here, with its import side effects neutralised: no network
check (YOLO_OFFLINE), no pip installs (YOLO_AUTOINSTALL), its settings file in a private folder
(YOLO_CONFIG_DIR), and OMP_NUM_THREADS as it was.

The pipeline runs the model's dense core: images (0..1) in, the head's raw tensors out, every level
concatenated: `boxes` (B, 4 x distribution bins, anchors), `scores` (B, classes, anchors: logits) and for
segmenters `mask_coefficient` (B, masks, anchors) and `proto` (B, masks, H/4, W/4). The model's own decoding
(DFL expectation, anchors, strides, sigmoid) and NMS run outside the graph, in `decode_detections`, so the
exported graph is what its raw numbers can be checked on (decoded pixel coordinates beside scores in one
tensor are not), and quantization never touches the box decoding. The head's final convolutions (box
distribution bins, class scores, mask coefficients, prototypes) are always kept."""

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


RAW = ("boxes", "scores", "mask_coefficient", "proto")


class RawHead:
    """Mixed into the Detect / Segment head: its raw per-level tensors, concatenated, without decoding."""

    def forward(self, x):
        preds = self.forward_head(x, **self.one2many)
        if getattr(self, "proto", None) is not None:
            preds["proto"] = self.proto(x[0])
        return {k: preds[k] for k in RAW if k in preds}


class YoloCore:
    """Mixed into the DetectionModel / SegmentationModel: the raw head tensors (see the module docstring), the
    channels they fix, and the model's own decoding and NMS outside the graph."""

    def protected_channels(self) -> dict[str, str]:
        head = f"model.{len(self.model) - 1}"
        return {f"{head}.cv2.*.2": "box distribution bins (DFL) of the detection head",
                f"{head}.cv3.*.2": "class scores of the detection head",
                f"{head}.cv4.*.2": "mask coefficients of the segmentation head",
                f"{head}.proto.cv3.conv": "mask prototypes of the segmentation head"}

    def quantization_exclusions(self) -> dict[str, str]:
        """The head's output layers stay float in INT8 (as ultralytics' own INT8 export keeps its head float):
        their raw logits are what the decoding thresholds and ranks."""
        return {p: f"{why}: a head output layer, kept in float" for p, why in self.protected_channels().items()}

    def decode_detections(self, outputs: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Per image {boxes (xyxy input pixels), scores, labels}: ultralytics' decoding (DFL, anchors, strides,
        sigmoid), then class-aware NMS at its validation settings (conf 0.001, IoU 0.7, 300 detections)."""
        from torchvision.ops import batched_nms

        head = self.model[-1]
        anchors, strides = self._otc_anchors
        dbox = head.decode_bboxes(head.dfl(outputs["boxes"].float()), anchors.unsqueeze(0)) * strides
        scores_all = outputs["scores"].float().sigmoid()
        dets = []
        for xywh, cls in zip(dbox.transpose(1, 2), scores_all.transpose(1, 2)):  # (anchors, 4), (anchors, classes)
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
        swap_class(head, RawHead, "")
        swap_class(model, YoloCore, "")
        model._otc_anchors = None
        if example is not None:  # the anchors of this input size (ultralytics' own make_anchors), once
            from ultralytics.utils.tal import make_anchors

            shapes = []
            hook = head.register_forward_pre_hook(lambda m, a: shapes.append([t.shape for t in a[0]]))
            with torch.no_grad():
                model(example)
            hook.remove()
            anchors, strides = make_anchors([torch.zeros(s) for s in shapes[0]], head.stride, 0.5)
            model._otc_anchors = (anchors.transpose(0, 1), strides.transpose(0, 1))
        return model


SOURCES.register("ultralytics", Ultralytics())
