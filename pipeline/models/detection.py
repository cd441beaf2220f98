"""torchvision's dense detectors (RetinaNet, FCOS, SSD, SSDlite) as the pipeline runs them: images already
resized and normalised in, the raw head tensors out (`cls_logits`, `bbox_regression`, and FCOS's
`bbox_ctrness`), static shapes. The model's own anchors, box coding, score threshold and NMS run outside the
graph, in `decode_detections`, exactly as torchvision's forward runs them after the head (the anchors of the
input size are computed once). Two-stage detectors (Faster/Mask/Keypoint R-CNN) are refused: their RoI heads
take a data-dependent number of proposals."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import OTCError
from ..surgery import original_class, set_submodule, swap_class

DENSE = ("RetinaNet", "FCOS", "SSD")
TWO_STAGE = ("FasterRCNN", "MaskRCNN", "KeypointRCNN", "GeneralizedRCNN")


def _features(model, images) -> list[torch.Tensor]:
    feats = model.backbone(images)
    return list(feats.values()) if isinstance(feats, dict) else [feats]


class DenseDetector:
    """Mixed into a torchvision RetinaNet / FCOS / SSD."""

    def forward(self, images):
        return self.head(_features(self, images))

    def protected_channels(self) -> dict[str, str]:
        return {"head.classification_head.cls_logits": "class scores per anchor (a head output)",
                "head.regression_head.bbox_reg": "box deltas per anchor (a head output)",
                "head.regression_head.bbox_ctrness": "centerness (a head output)",
                "head.classification_head.module_list.*": "class scores per anchor (a head output)",
                "head.regression_head.module_list.*": "box deltas per anchor (a head output)"}

    def quantization_exclusions(self) -> dict[str, str]:
        """The head's output layers stay float in INT8: their raw logits are what the decoding thresholds and ranks."""
        return {p: f"{why}: a head output layer, kept in float" for p, why in self.protected_channels().items()}

    def decode_detections(self, outputs: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Per image {boxes (xyxy input pixels), scores, labels}: the model's own postprocess_detections."""
        n = next(iter(outputs.values())).shape[0]
        anchors, levels, size = self._otc_anchors, self._otc_levels, self._otc_size
        head = {k: v.float() for k, v in outputs.items()}
        if original_class(self).__name__ == "SSD" or levels is None:
            return self.postprocess_detections(head, [anchors] * n, [size] * n)
        split = {k: list(v.split(levels, dim=1)) for k, v in head.items()}
        return self.postprocess_detections(split, [list(anchors.split(levels))] * n, [size] * n)


def _plain_batchnorm(model: nn.Module) -> None:
    """FrozenBatchNorm2d (what torchvision builds for trained backbones) as the BatchNorm2d it equals in eval mode,
    so fold_bn folds it like any BatchNorm."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    for name, m in list(model.named_modules()):
        if isinstance(m, FrozenBatchNorm2d):
            bn = nn.BatchNorm2d(m.weight.shape[0], eps=m.eps).eval()
            with torch.no_grad():
                for k in ("weight", "bias", "running_mean", "running_var"):
                    getattr(bn, k).copy_(getattr(m, k))
            set_submodule(model, name, bn)


def adapt(model: nn.Module, example: torch.Tensor | None, arch: str) -> nn.Module:
    """The dense core of a torchvision detector (see the module docstring)."""
    kinds = [c.__name__ for c in type(model).__mro__]
    if any(k in TWO_STAGE for k in kinds):
        raise OTCError(f"model.arch = {arch!r}: two-stage detectors are not supported: the RoI heads "
                       f"({type(model).__name__}.roi_heads) take a number of proposals that depends on the image (NMS "
                       "inside the model), which has no static-shape export; use a dense detector (RetinaNet, FCOS, "
                       "SSD, SSDlite)")
    if not any(k in DENSE for k in kinds):
        raise OTCError(f"model.arch = {arch!r}: {type(model).__name__} is not one of the dense detectors "
                       f"otcompress runs ({', '.join(DENSE)})")
    _plain_batchnorm(model)
    swap_class(model, DenseDetector, "")
    model._otc_anchors = model._otc_levels = model._otc_size = None
    if example is not None:
        from torchvision.models.detection.image_list import ImageList

        with torch.no_grad():
            feats = _features(model, example)
            size = tuple(example.shape[-2:])
            anchors = model.anchor_generator(ImageList(example, [size]), feats)[0]
        hw = [f.shape[-2] * f.shape[-1] for f in feats]
        per = anchors.shape[0] // sum(hw)
        model._otc_anchors, model._otc_size = anchors, size
        model._otc_levels = [h * per for h in hw]
    return model
