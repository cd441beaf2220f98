"""Learned transport masks (DTP): exact keep counts at every step, hardening on a toy problem with a
known answer, an end-to-end run, resume equals uninterrupted, FLOPs budget, and DDP (gloo) equals one process."""

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from otcompress.dtp.masks import TransportMasks

from .conftest import ROOT, run_cli, write_recipe


def test_mask_sums_to_k_and_stays_in_unit_interval_every_step():
    torch.manual_seed(0)
    sizes, keeps = [20, 7, 64], [0.35, 3 / 7, 0.25]
    mk = TransportMasks(sizes, keeps, [torch.randn(n) for n in sizes], eps=0.05, iters=1).train()
    for _ in range(200):
        m = mk()
        for g, (n, k) in enumerate(zip(sizes, keeps)):
            assert abs(m[g, :n].double().sum().item() - n * k) < 1e-4
            assert (m[g, n:] == 0).all()
        assert m.min() >= 0 and m.max() <= 1
        assert torch.isfinite(m).all()


def test_masks_harden_and_pick_the_known_good_channels():
    """y depends on 4 of 16 inputs; scores and weights trained jointly must keep exactly those 4."""
    torch.manual_seed(0)
    n, k, good = 16, 4, [1, 5, 9, 14]
    X = torch.randn(512, n)
    w_true = torch.zeros(n)
    w_true[good] = torch.tensor([2.0, -1.5, 1.0, 2.5])
    y = X @ w_true
    mk = TransportMasks([n], [k / n], [torch.zeros(n) + 0.01 * torch.randn(n)], eps=0.5, iters=1).train()
    w = torch.nn.Parameter(torch.zeros(n))
    opt = torch.optim.SGD([w, mk.scores], lr=0.05, momentum=0.9)
    for step in range(600):
        m = mk()[0]
        loss = ((X * m) @ w - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    m = mk(update=False)[0]
    assert ((m - m.round()) ** 2).mean() < 1e-3
    assert mk.hard(0, k).tolist() == good


def test_no_nan_at_small_eps():
    mk = TransportMasks([8, 5], [0.5, 0.4], [torch.randn(8), torch.randn(5)], eps=1e-5, iters=3).train()
    for _ in range(5):
        m = mk()
        m.sum().backward()
        assert torch.isfinite(m).all() and torch.isfinite(mk.scores.grad).all()


DIGITS = ROOT / "recipes" / "data"


def dtp_recipe(tmp_path, extra="", arch='"digits_cnn"', ckpt=True, stages_after=True, epochs=2):
    text = f"""
name = "dtp"
[model]
arch = {arch}
{'checkpoint = "' + str(DIGITS / 'digits_cnn.safetensors') + '"' if ckpt else ''}
input_shape = [1, 1, 8, 8]
[data]
eval = "{DIGITS / 'digits-test.npz'}"
train = "{DIGITS / 'digits-train.npz'}"
mean = [0.3063]
std = [0.3769]
[[stages]]
kind = "dtp"
mask_epochs = {epochs}
finetune_epochs = {epochs}
batch_size = 64
lr = 0.02
augment = "crop"
device = "cpu"
{extra}
"""
    if stages_after:
        text += '[[stages]]\nkind = "export_onnx"\n[[stages]]\nkind = "validate"\nsamples = 64\n'
    return write_recipe(tmp_path, text)


def test_end_to_end_exact_counts_exports_validates(tmp_path):
    p = dtp_recipe(tmp_path, "sparsity = 0.5")
    res = run_cli("run", p, "--out", tmp_path / "o", "--quiet")
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    dtp = next(s for s in rep["stages"] if s["kind"] == "dtp")
    for g in dtp["details"]["groups"]:
        assert g["after"] == round(g["before"] * 0.5)
    assert rep["validation"]["passed"] and dtp["flops"] < 0.3 * rep["stages"][0]["flops"]
    assert [h["phase"] for h in dtp["details"]["history"]] == ["mask", "mask", "finetune", "finetune"]
    assert not (tmp_path / "o" / "checkpoints").exists()


def test_flops_budget_lands_within_2_percent(tmp_path):
    p = dtp_recipe(tmp_path, "flops = 0.5", stages_after=False)
    assert run_cli("run", p, "--out", tmp_path / "o", "--quiet").exit_code == 0
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    ratio = rep["stages"][1]["flops"] / rep["stages"][0]["flops"]
    assert abs(ratio - 0.5) <= 0.02 * 0.5 + 1e-9, ratio


def test_dtp_without_train_data_is_a_clear_error(tmp_path):
    p = dtp_recipe(tmp_path, "sparsity = 0.5")
    p.write_text(p.read_text().replace(f'train = "{DIGITS / "digits-train.npz"}"\n', ""))
    res = run_cli("run", p, "--out", tmp_path / "o")
    assert res.exit_code == 2 and "[data].train" in res.output


def _weights(path):
    return load_file(str(path))


def test_resume_equals_uninterrupted(tmp_path):
    p = dtp_recipe(tmp_path, "sparsity = 0.5", stages_after=False)
    assert run_cli("run", p, "--out", tmp_path / "full", "--quiet").exit_code == 0
    for stop in ("mask:1", "finetune:1"):
        out = tmp_path / f"part-{stop.replace(':', '')}"
        env = dict(os.environ, OTCOMPRESS_STOP_AFTER_EPOCH=stop)
        r = subprocess.run([sys.executable, "-m", "otcompress.cli", "run", str(p), "--out", str(out), "--quiet"],
                           env=env, capture_output=True, text=True)
        assert r.returncode != 0 and not out.exists()
        r = subprocess.run([sys.executable, "-m", "otcompress.cli", "run", str(p), "--out", str(out), "--quiet", "--resume"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        a, b = _weights(tmp_path / "full" / "compressed.safetensors"), _weights(out / "compressed.safetensors")
        assert a.keys() == b.keys()
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-5), (stop, k)


NOBN = """
import torch.nn as nn
def build():
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
"""


def test_two_process_gloo_equals_one_process(tmp_path):
    """BatchNorm statistics are per process unless SyncBatchNorm (GPU only), so this uses a BN-free net."""
    (tmp_path / "nobn.py").write_text(NOBN)
    p = dtp_recipe(tmp_path, "sparsity = 0.5", arch='"nobn:build"', ckpt=False, stages_after=False, epochs=1)
    env = dict(os.environ, PYTHONPATH=str(tmp_path), OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, "-m", "otcompress.cli", "run", str(p), "--out", str(tmp_path / "one"), "--quiet"],
                         env=env, capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "otcompress.cli", "run", str(p), "--out", str(tmp_path / "two"), "--quiet"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _weights(tmp_path / "one" / "compressed.safetensors"), _weights(tmp_path / "two" / "compressed.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-4, rtol=1e-4), (k, (a[k] - b[k]).abs().max(), a[k].abs().max())
    rep = json.loads((tmp_path / "two" / "report.json").read_text())
    assert rep["stages"][1]["details"]["world_size"] == 2


def test_augmentation_of_a_sample_does_not_depend_on_its_batch():
    """Sharded runs see the same views as one process only if a sample's crop and flip depend on
    (seed, epoch, index) alone — not on which other samples share its batch."""
    from otcompress.dtp.train import augment, augment_plan

    x = torch.arange(40 * 3 * 8 * 8, dtype=torch.float32).reshape(40, 3, 8, 8)
    plan = augment_plan(40, 8, seed=3, epoch=1)
    whole = augment(x, torch.arange(40), plan, "crop_flip")
    for idx in (torch.tensor([5, 7]), torch.tensor([5, 39]), torch.tensor([0, 5, 20])):
        part = augment(x[idx], idx, plan, "crop_flip")
        assert torch.equal(part, whole[idx])
    assert not torch.equal(whole, x)  # it does augment
