"""Object detectors: raw dense head tensors out of the exported graph; the model family's adapter decodes
them (anchors, box coding, score threshold, NMS) in PyTorch with `decode_detections(outputs)`. Fidelity, no
labels needed: the compressed model's detections scored against the original's confident detections as
pseudo ground truth, mAP50-95 and mAP50 (torchmetrics' MeanAveragePrecision on pycocotools); with labels
(boxes and classes), the true mAP of both."""

from __future__ import annotations

import numpy as np
import torch

from .base import TASKS, Bound, Task, output_errors

PSEUDO_GT_SCORE = 0.25  # the original's detections above it are the pseudo ground truth (ultralytics' conf default)
PSEUDO_GT_FLOOR = 3  # an image where the original is confident of nothing: its 3 best detections stand in


def mean_ap(preds: list[dict], targets: list[dict]) -> dict:
    """{map, map_50} of preds against targets (lists of {boxes xyxy, scores, labels} per image). Without any
    target box it is 1 where nothing was detected either, else 0."""
    if not any(len(t["boxes"]) for t in targets):
        empty = float(not any(len(p["boxes"]) for p in preds))
        return {"map": empty, "map_50": empty}
    try:
        from torchmetrics.detection import MeanAveragePrecision
    except ImportError as e:
        from ..errors import OTCError

        raise OTCError(f"detection metrics need torchmetrics and pycocotools ({e}): pip install 'otcompress[detection]'") from None
    m = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
    m.update([{k: d[k] for k in ("boxes", "scores", "labels")} for d in preds],
             [{"boxes": d["boxes"], "labels": d["labels"]} for d in targets])
    r = m.compute()
    return {"map": max(0.0, float(r["map"])), "map_50": max(0.0, float(r["map_50"]))}


def pseudo_truth(dets: list[dict], score: float = PSEUDO_GT_SCORE) -> list[dict]:
    """The original's detections above `score`; on an image with none, its PSEUDO_GT_FLOOR best (so the check
    is defined on every image, and a model that finds nothing where the original found something fails)."""
    out = []
    for d in dets:
        keep = d["scores"] >= score
        if not keep.any():
            keep = torch.zeros_like(keep)
            keep[torch.argsort(d["scores"], descending=True)[:PSEUDO_GT_FLOOR]] = True
        out.append({"boxes": d["boxes"][keep], "labels": d["labels"][keep]})
    return out


def label_targets(labels: dict) -> list[dict]:
    """[data] detection labels (boxes (N, M, 4) xyxy pixels, box_classes (N, M), -1 padding) as per-image targets."""
    boxes, classes = torch.as_tensor(labels["boxes"]).float(), torch.as_tensor(labels["box_classes"]).long()
    return [{"boxes": b[c >= 0], "labels": c[c >= 0]} for b, c in zip(boxes, classes)]


def decode(model, outputs: dict[str, np.ndarray]) -> list[dict]:
    with torch.no_grad():
        return model.decode_detections({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in outputs.items()})


class Detection(Task):
    name = "detection"
    # raw head / score-map tensors reach magnitudes of hundreds, where float32 rounding alone differs by more than
    # a fixed 1e-4 between two correct computations: atol grows with the output's scale. Large raw logits make a
    # relative tolerance of 1e-3 loose: on the trained YOLOv8n a 1e-3 change of one early weight tensor moves
    # outputs by up to 7e-4 of themselves, a correct export by 9e-7 (the README's gate table): rtol 1e-4 fails it.
    gate_defaults = {"atol_scale": 1e-5, "rtol": 1e-4}
    columns = (("map50_95_vs_original", "mAP vs orig"), ("max_abs_error", "max |Δ|"), ("map50_95", "mAP50-95"))

    def matches(self, model, outputs, example):
        return callable(getattr(model, "decode_detections", None))

    def fidelity(self, ref, out, labels=None, model=None):
        d_ref, d_out = decode(model, ref), decode(model, out)
        vs = mean_ap(d_out, pseudo_truth(d_ref))
        res = {**output_errors(ref, out), "output": "detections", "map50_95_vs_original": vs["map"],
               "map50_vs_original": vs["map_50"], "detections_original": int(sum(len(d["boxes"]) for d in pseudo_truth(d_ref))),
               "pseudo_gt_score": PSEUDO_GT_SCORE}
        if isinstance(labels, dict) and "boxes" in labels:
            truth = label_targets(labels)
            a, b = mean_ap(d_ref, truth), mean_ap(d_out, truth)
            res.update(map50_95_original=a["map"], map50_original=a["map_50"], map50_95=b["map"], map50=b["map_50"],
                       map50_95_compressed=b["map"], map_drop=a["map"] - b["map"])
        return res

    def checks(self, fid, gate):
        out = [Bound("fidelity:map50_95_vs_original", "detections", fid["map50_95_vs_original"], gate.min_map_vs_original)]
        if gate.max_map_drop is not None and "map_drop" in fid:
            out.append(Bound("fidelity:map_drop", "detections", fid["map_drop"], gate.max_map_drop, False))
        return out


TASKS.register("detection", Detection())
