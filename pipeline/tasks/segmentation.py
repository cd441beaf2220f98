"""Semantic segmenters: a [batch, classes, H, W] score map at the input's resolution (`out`, with `aux` beside
it in torchvision's FCN/DeepLabV3/LRASPP). Fidelity, no labels needed: the compressed model's per-pixel
classes against the original's (pixel agreement) and its mIoU with the original's masks as ground truth;
with label masks, the true mIoU of both. mIoU by torchmetrics (per-class Jaccard index), averaged over the
classes present in either mask."""

from __future__ import annotations

import numpy as np
import torch

from .base import TASKS, Bound, Task, output_errors


def score_map(outputs: dict) -> str | None:
    """The output holding the per-pixel class scores: `out` where present, else a single 4-D output."""
    if "out" in outputs:
        return "out"
    four = [k for k, v in outputs.items() if np.ndim(v) == 4]
    return four[0] if len(four) == 1 and len(outputs) == 1 else None


def miou(pred: np.ndarray, target: np.ndarray, classes: int, ignore: int | None = None) -> float:
    """Mean IoU over the classes present in pred or target (torchmetrics' multiclass Jaccard index)."""
    from torchmetrics.functional.classification import multiclass_jaccard_index

    p, t = torch.from_numpy(pred).long().flatten(), torch.from_numpy(target).long().flatten()
    per = multiclass_jaccard_index(p, t, classes, average="none", ignore_index=ignore, validate_args=False)
    present = torch.zeros(classes, dtype=torch.bool)
    present[p.unique().clamp(0, classes - 1)] = True
    present[t[t != ignore].unique().clamp(0, classes - 1) if ignore is not None else t.unique()] = True
    return float(per[present].mean()) if present.any() else 1.0


class Segmentation(Task):
    name = "segmentation"
    # raw head / score-map tensors reach magnitudes of hundreds, where float32 rounding alone differs by more than
    # a fixed 1e-4 between two correct computations: atol grows with the output's scale (measured: correct exports
    # differ by ~2e-6 of it, see the README's detection gate table)
    gate_defaults = {"atol_scale": 1e-5}
    columns = (("pixel_agreement", "pixel agree"), ("max_abs_error", "max |Δ|"), ("miou", "mIoU"))

    def matches(self, model, outputs, example):
        key = score_map(outputs)
        if key is None:
            return False
        v = outputs[key]
        return v.dim() == 4 and v.shape[1] > 1 and tuple(v.shape[2:]) == tuple(example.shape[2:])

    def fidelity(self, ref, out, labels=None, model=None):
        key = score_map(ref)
        r, o = ref[key].argmax(1), out[key].argmax(1)
        classes = ref[key].shape[1]
        res = {**output_errors(ref, out), "output": key, "pixel_agreement": float((r == o).mean()),
               "miou_vs_original": miou(o, r, classes)}
        if isinstance(labels, dict) and "masks" in labels:
            masks = np.asarray(labels["masks"])
            res["miou_original"] = miou(r, masks, classes, ignore=255)
            res["miou"] = res["miou_compressed"] = miou(o, masks, classes, ignore=255)
            res["miou_drop"] = res["miou_original"] - res["miou_compressed"]
        return res

    def checks(self, fid, gate):
        key = fid["output"]
        out = [Bound("fidelity:pixel_agreement", key, fid["pixel_agreement"], gate.min_pixel_agreement),
               Bound("fidelity:miou_vs_original", key, fid["miou_vs_original"], gate.min_miou_vs_original)]
        if gate.max_miou_drop is not None and "miou_drop" in fid:
            out.append(Bound("fidelity:miou_drop", key, fid["miou_drop"], gate.max_miou_drop, False))
        return out


TASKS.register("segmentation", Segmentation())
