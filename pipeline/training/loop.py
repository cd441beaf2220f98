"""The training loop: in-memory data with seeded per-sample augmentation (so a run sharded over processes sees
exactly the batches of a single-process run), a cosine schedule, bf16 autocast on GPU, the global batch
split over ranks."""

from __future__ import annotations

import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..progress import bar as progress_bar
from .distributed import dist_info


def augment_plan(n: int, size: int, seed: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop offsets and flips for every sample of an epoch, drawn once from (seed, epoch): a sample gets the
    same view whatever batch or process it lands in."""
    pad = max(1, size // 8)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randint(0, 2 * pad + 1, (n, 2), generator=g), torch.rand(n, generator=g) < 0.5


def augment(x: torch.Tensor, idx: torch.Tensor, plan, mode: str) -> torch.Tensor:
    """Random crop with zero padding (1/8 of the side) and horizontal flip, looked up in the epoch's plan."""
    if mode == "none":
        return x
    n, c, h, w = x.shape
    pad = max(1, h // 8)
    offsets, flips = plan
    xp = F.pad(x, (pad, pad, pad, pad))
    out = torch.empty_like(x)
    for i in range(n):
        dy, dx = offsets[idx[i]].tolist()
        v = xp[i, :, dy:dy + h, dx:dx + w]
        out[i] = v.flip(-1) if (mode == "crop_flip" and flips[idx[i]]) else v
    return out


def batches(n: int, batch_size: int, seed: int, epoch: int):
    """This process's share of each global batch: the same permutation on every rank, interleaved."""
    rank, world = dist_info()
    g = torch.Generator().manual_seed(seed + epoch)
    perm = torch.randperm(n, generator=g)
    steps = n // batch_size  # drop the last partial batch so every rank does the same number of steps
    for s in range(steps):
        glob = perm[s * batch_size:(s + 1) * batch_size]
        yield glob[rank::world]


def cosine(opt, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / max(1, total_steps))))


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: str, bs: int = 512) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), bs):
        correct += (model(x[i:i + bs].to(device)).argmax(-1).cpu() == y[i:i + bs]).sum().item()
    return correct / max(1, len(x))


def train_epoch(model, opt, sched, data, *, epoch, seed, batch_size, device, amp, augment_mode, extra_loss=None,
                progress=True, status=None, desc="train"):
    """One epoch. `data` = (x_raw, y, normalise); returns the mean loss."""
    x_raw, y, normalise = data
    rank, world = dist_info()
    model.train()
    steps = len(x_raw) // batch_size
    bar = progress_bar(batches(len(x_raw), batch_size, seed, epoch), total=steps, desc=f"{desc} {epoch + 1}",
                       enabled=progress and rank == 0, mininterval=2.0)
    total, count = torch.zeros((), device=device), 0
    plan = augment_plan(len(x_raw), x_raw.shape[-2], seed, epoch)
    shown = time.monotonic()
    for idx in bar:
        xb = augment(normalise(x_raw, idx), idx, plan, augment_mode).to(device, non_blocking=True)
        yb = y[idx].to(device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
            out = model(xb)
        # mean over the *global* batch: each rank's share is averaged by DDP's gradient mean
        loss = F.cross_entropy(out.float(), yb)
        if extra_loss is not None:
            loss = loss + extra_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += loss.detach()  # no host synchronisation per step: the CPU keeps queueing kernels ahead
        count += 1
        if not bar.disable and time.monotonic() - shown > 2.0:  # status costs a sync: only when the bar redraws
            shown = time.monotonic()
            bar.set_postfix(loss=f"{loss.item():.3f}", **(status() if status is not None else {}))
    return float(total) / max(1, count)
