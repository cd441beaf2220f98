"""Shared helpers. Tests make their own small data or read ../shared/data (skipped, with the reason
printed, where a fresh clone elsewhere does not have it)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
QUICKSTART = ROOT / "recipes" / "quickstart.toml"


def shared(rel: str) -> Path:
    p = SHARED / rel
    if not p.exists():
        pytest.skip(f"{p} not present (../shared/data is only beside the project's own checkouts)")
    return p


def run_cli(*args):
    from click.testing import CliRunner

    from otcompress.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


INTERRUPT = """
import os, signal, sys
import otcompress.training.loop as learn
n, calls, orig = int(os.environ["OTC_TEST_INTERRUPT_AT_EPOCH"]), [0], learn.train_epoch
def interrupting(*a, **k):  # a real Ctrl-C as the n-th training epoch starts (epoch n-1's checkpoint is written)
    calls[0] += 1
    if calls[0] == n:
        os.kill(os.getpid(), signal.SIGINT)
    return orig(*a, **k)
learn.train_epoch = interrupting
signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal: a background job inherits SIGINT ignored
from otcompress.cli import main
sys.argv = ["otcompress", *sys.argv[1:]]
main()
"""


def interrupted_run(args, at_epoch: int, env=None):
    """`otcompress ARGS` in a subprocess that receives SIGINT when its at_epoch-th training epoch starts."""
    import os
    import subprocess
    import sys

    env = dict(env or os.environ, OTC_TEST_INTERRUPT_AT_EPOCH=str(at_epoch))
    return subprocess.run([sys.executable, "-c", INTERRUPT, *map(str, args)], env=env, capture_output=True, text=True)


def write_recipe(tmp: Path, text: str, name="r.toml") -> Path:
    p = tmp / name
    p.write_text(text)
    return p


@pytest.fixture
def quickstart_copy(tmp_path) -> Path:
    """The quickstart recipe and its data in a temporary folder (relative paths keep working)."""
    shutil.copytree(ROOT / "recipes", tmp_path / "recipes")
    return tmp_path / "recipes" / "quickstart.toml"


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g) * 0.5 + 1)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model.eval()


CNN_ZOO = [
    ("cifar_resnet20", {}, [1, 3, 32, 32]),
    ("cifar_resnet56", {}, [1, 3, 32, 32]),
    ("cifar_resnet18", {"width": 16}, [1, 3, 32, 32]),
    ("cifar_vgg11_bn", {"width": 32}, [1, 3, 32, 32]),
    ("cifar_mobilenetv2", {}, [1, 3, 32, 32]),
    ("resnet18", {"num_classes": 10}, [1, 3, 64, 64]),
    ("resnet50", {"num_classes": 10}, [1, 3, 64, 64]),
    ("digits_cnn", {}, [1, 1, 8, 8]),
]
