"""Processes under torchrun: which rank this is, joining the process group, the device to train on."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def dist_info() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launch_rank() -> int:
    """The rank torchrun gave this process (0 when not under torchrun): only rank 0 writes artifacts."""
    return int(os.environ.get("RANK", "0"))


def resolve_device(name: str) -> str:
    """The recipe's `device`: auto = CUDA where available."""
    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def maybe_init_distributed(device: str) -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); returns whether this run is distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True
