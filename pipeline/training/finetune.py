"""Fine-tuning a model in place with the training keys every training stage shares (defined here once):
SGD with momentum and a cosine schedule, a checkpoint per epoch (phase 'finetune') that `--resume` continues."""

from __future__ import annotations

import time

import torch
import torch.nn as nn
from tqdm import tqdm

from ..errors import OTCError
from ..recipe.schema import Field
from . import loop
from .distributed import dist_info

TRAIN_FIELDS = {
    "lr": Field((float,), default=0.05, lo=0.0),
    "momentum": Field((float,), default=0.9, lo=0.0, hi=1.0),
    "weight_decay": Field((float,), default=5e-4, lo=0.0),
    "batch_size": Field((int,), default=128, lo=1, help="a positive integer (the global batch over all processes)"),
    "device": Field((str,), default="auto", choices=("auto", "cpu", "cuda")),
    "seed": Field((int,), default=0),
    "augment": Field((str,), default="crop_flip", choices=("crop_flip", "crop", "none")),
    "compile": Field((bool,), default=False,
                     help="true or false: torch.compile the training step (worth it on CUDA: small operators fuse "
                          "into a few kernels)"),
}


def labelled(data: dict | None) -> list[str]:
    """Training stages need labels: say so before any work, not after the first stages ran."""
    from ..data import has_labels

    if data and data.get("train") and not has_labels(data["train"]):
        return [f"[data].train = {data['train']} has no labels (an .npz needs an array 'y')"]
    return []


def make_wrap(distributed: bool, device: str, compile: bool = False, sync_bn: bool = True):
    """DDP across processes (BatchNorm synchronised on CUDA unless `sync_bn` is off: DTP's masks act on the BN
    modules and keep per-process BN); torch.compile on request (the first steps pay the compilation)."""
    def wrap(m):
        if distributed:
            if device == "cuda" and sync_bn:
                m = nn.SyncBatchNorm.convert_sync_batchnorm(m)
            m = nn.parallel.DistributedDataParallel(m, device_ids=[torch.cuda.current_device()] if device == "cuda" else None)
        return torch.compile(m) if compile else m

    return wrap


def training_data(ctx):
    """((raw train images, labels, normalise), (normalised eval images or None, eval labels or None))."""
    train = ctx.dataset("train")
    if train.y is None:
        raise OTCError(f"{ctx.recipe.data['train']}: training needs labels (y)")
    evals = ctx.dataset("eval")
    norm = lambda x, idx: ctx.normalise(type(train)(x, None), idx)  # noqa: E731
    ex = ctx.normalise(evals) if evals is not None and evals.y is not None else None
    return (train.x, train.y, norm), (ex, evals.y if ex is not None else None)


def finetune(model, ctx, p, epochs, data, evalset, device, ckpt, state, history, extra_state, wrap, desc="finetune"):
    """Train `model` for `epochs` with the TRAIN_FIELDS settings `p`, from `state` (a checkpoint) if given;
    returns the history (loss and eval accuracy per epoch)."""
    steps = len(data[0]) // p["batch_size"]
    rank = dist_info()[0]
    model.to(device)
    net = wrap(model)
    opt = torch.optim.SGD(model.parameters(), lr=p["lr"], momentum=p["momentum"], weight_decay=p["weight_decay"])
    sched = loop.cosine(opt, epochs * steps)
    start = 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start = state["epoch"]
    ex, ey = evalset
    for ep in range(start, epochs):
        t0 = time.perf_counter()
        loss = loop.train_epoch(net, opt, sched, data, epoch=1000 + ep, seed=p["seed"], batch_size=p["batch_size"],
                                device=device, amp=device == "cuda", augment_mode=p["augment"], progress=ctx.progress,
                                desc=desc)
        secs = time.perf_counter() - t0
        acc = loop.evaluate(model, ex, ey, device) if ex is not None else None
        history.append({"phase": "finetune", "epoch": ep + 1, "loss": loss, "eval_accuracy": acc, "seconds": secs})
        if ctx.progress and rank == 0:
            tqdm.write(f"{desc} epoch {ep + 1}: loss {loss:.4f}" + (f" eval acc {acc:.4f}" if acc is not None else ""))
        ckpt.save({"phase": "finetune", "epoch": ep + 1, "model": model.state_dict(), "opt": opt.state_dict(),
                   "sched": sched.state_dict(), "history": history, **extra_state})
    return history
