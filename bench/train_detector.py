"""Train the detectors the detection benchmark measures on (no pretrained weights can be downloaded here):
a YOLOv8n (ultralytics' yolov8n.yaml, 10 classes, 128x128) and a torchvision SSDlite (MobileNetV3 backbone,
160x160) on CIFAR-10 canvases (bench/canvas.py), each within a wall-clock budget on the CPU. Checkpoints
(state_dicts as safetensors) and a training card go to the cache outside the repository ($OTC_CACHE, default
~/.cache/otcompress-bench); nothing is committed.

    .venv/bin/python bench/train_detector.py yolo --minutes 28
    .venv/bin/python bench/train_detector.py ssdlite --minutes 20
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from canvas import CACHE, SIZE, canvases, cifar, sets
from common import SHARED

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]  # the recipes normalise canvases this way


def batches(tx, ty, batch: int, seed: int, size: int):
    step = 0
    while True:
        img, boxes, classes = canvases(tx, ty, batch, seed=seed * 1_000_003 + step, size=size)
        if step % 2:  # horizontal flips of the whole canvas
            img = img.flip(-1)
            boxes = torch.stack([size - boxes[..., 2], boxes[..., 1], size - boxes[..., 0], boxes[..., 3]], -1) \
                * (classes[..., None] >= 0)
        yield img, boxes, classes
        step += 1


def evaluate(model, path, normalise) -> dict:
    """mAP50-95 / mAP50 of the model (the pipeline's form: decode_detections) on the cached test canvases."""
    import numpy as np

    from otcompress.tasks.detection import label_targets, mean_ap

    z = np.load(path)
    x = torch.from_numpy(z["x"]).permute(0, 3, 1, 2)
    dets = []
    with torch.no_grad():
        for i in range(0, len(x), 100):
            out = model(normalise(x[i:i + 100]))
            dets += model.decode_detections(out)
    truth = label_targets({"boxes": z["boxes"], "box_classes": z["box_classes"]})
    return mean_ap(dets, truth)


def norm(x):
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (x.float() / 255 - m) / s


def train_yolo(minutes: float, batch: int, lr: float):
    from ultralytics.cfg import get_cfg

    from otcompress.models import load

    spec = {"arch": "ultralytics:yolov8n.yaml", "args": {"num_classes": 10}, "checkpoint": None,
            "input_shape": [1, 3, SIZE, SIZE]}
    from otcompress.models.ultralytics import _import

    tasks = _import()
    torch.manual_seed(0)
    model = tasks.DetectionModel("yolov8n.yaml", nc=10, verbose=False)
    model.args = get_cfg()
    tx, ty, _, _ = cifar(SHARED)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    t0, step, hist = time.time(), 0, []
    budget = minutes * 60
    model.train()
    for img, boxes, classes in batches(tx, ty, batch, seed=0, size=SIZE):
        frac = (time.time() - t0) / budget
        if frac >= 1:
            break
        for gr in opt.param_groups:  # linear warm-up, then cosine decay over the time budget
            gr["lr"] = lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + torch.cos(torch.tensor(frac * torch.pi))).item()
        keep = classes >= 0
        bi = torch.arange(len(img))[:, None].expand_as(classes)[keep]
        b = boxes[keep] / SIZE
        xywh = torch.cat([(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]], 1)
        data = {"img": img.float() / 255, "cls": classes[keep].float()[:, None], "bboxes": xywh, "batch_idx": bi.float()}
        loss, items = model.loss(data)
        opt.zero_grad(set_to_none=True)
        (loss.sum() / len(img)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        if step % 50 == 0:
            hist.append({"step": step, "seconds": round(time.time() - t0), **{k: round(float(v), 3) for k, v in items.items()}})
            print(hist[-1], flush=True)
        step += 1
    model.eval()
    ckpt = CACHE / "yolov8n_canvas.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    spec["checkpoint"] = str(ckpt)
    net = load(spec)  # as the pipeline runs it: export form, NMS outside
    yolo_norm = lambda x: x.float() / 255  # noqa: E731  (ultralytics models take 0..1 images)
    res = evaluate(net, sets(SHARED)["test"], yolo_norm)
    return ckpt, {"model": "yolov8n", "steps": step, "batch": batch, "minutes": minutes, "images": step * batch,
                  "test_map50_95": res["map"], "test_map50": res["map_50"], "history": hist,
                  "input": [1, 3, SIZE, SIZE], "mean": [0, 0, 0], "std": [1, 1, 1]}


SSD_SIZE = 160


def train_ssdlite(minutes: float, batch: int, lr: float):
    import torchvision
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    from otcompress.models import load

    torch.manual_seed(0)
    model = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                      num_classes=11)
    model.transform = GeneralizedRCNNTransform(SSD_SIZE, SSD_SIZE, MEAN, STD, size_divisible=1,
                                               fixed_size=(SSD_SIZE, SSD_SIZE))
    tx, ty, _, _ = cifar(SHARED)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    t0, step, hist = time.time(), 0, []
    budget = minutes * 60
    model.train()
    for img, boxes, classes in batches(tx, ty, batch, seed=1, size=SSD_SIZE):
        frac = (time.time() - t0) / budget
        if frac >= 1:
            break
        for gr in opt.param_groups:
            gr["lr"] = lr * min(1.0, (step + 1) / 100) * 0.5 * (1 + torch.cos(torch.tensor(frac * torch.pi))).item()
        images = list(img.float() / 255)
        targets = [{"boxes": b[c >= 0], "labels": c[c >= 0] + 1} for b, c in zip(boxes, classes)]  # 0: background
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        if step % 50 == 0:
            hist.append({"step": step, "seconds": round(time.time() - t0), **{k: round(float(v), 3) for k, v in losses.items()}})
            print(hist[-1], flush=True)
        step += 1
    model.eval()
    ckpt = CACHE / "ssdlite_canvas.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    net = load({"arch": "torchvision:ssdlite320_mobilenet_v3_large", "args": {"num_classes": 11}, "checkpoint": str(ckpt),
                "input_shape": [1, 3, SSD_SIZE, SSD_SIZE]})
    res = evaluate(net, sets(SHARED, SSD_SIZE, offset=1)["test"], norm)
    return ckpt, {"model": "ssdlite320_mobilenet_v3_large", "steps": step, "batch": batch, "minutes": minutes,
                  "images": step * batch, "test_map50_95": res["map"], "test_map50": res["map_50"], "history": hist,
                  "input": [1, 3, SSD_SIZE, SSD_SIZE], "mean": MEAN, "std": STD,
                  "note": "classes are shifted by one (0 is the background)"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", choices=["yolo", "ssdlite"])
    ap.add_argument("--minutes", type=float, default=28.0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    args = ap.parse_args()
    sets(SHARED), sets(SHARED, SSD_SIZE, offset=1)
    fn = train_yolo if args.model == "yolo" else train_ssdlite
    ckpt, card = fn(args.minutes, args.batch, args.lr)
    card_path = ckpt.with_suffix(".json")
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {ckpt} and {card_path}: test mAP50-95 {card['test_map50_95']:.3f}, mAP50 {card['test_map50']:.3f}")


if __name__ == "__main__":
    main()
