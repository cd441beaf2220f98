"""Learned transport masks (DTP): exact keep counts at every step, hardening on a toy problem with a
known answer, an end-to-end run, resume equals uninterrupted, FLOPs budget, and DDP (gloo) equals one process."""

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from otcompress.dtp.masks import TransportMasks

from .conftest import ROOT, interrupted_run, run_cli, write_recipe


def test_mask_sums_to_k_and_stays_in_unit_interval_every_step():
    torch.manual_seed(0)
    sizes, keeps = [20, 7, 64], [0.35, 3 / 7, 0.25]
    mk = TransportMasks(sizes, keeps, [torch.randn(n) for n in sizes], eps=0.05).train()
    for _ in range(200):
        m = mk()
        for g, (n, k) in enumerate(zip(sizes, keeps)):
            assert abs(m[g, :n].double().sum().item() - n * k) < 1e-4
            assert (m[g, n:] == 0).all()
        assert m.min() >= 0 and m.max() <= 1
        assert torch.isfinite(m).all()


def _literal_step(mk, sweeps, project=True):
    """One proximal step spelled out: log-domain Sinkhorn sweeps on the kernel P_prev * exp(-C/eps) (plan
    rebuilt from the stored log-odds), then, if asked, the exact two-point projection the module ends with."""
    import torch.nn.functional as F

    valid, n = mk.valid, mk.valid.sum(1).double()
    log_a = torch.where(valid, -torch.log(n)[:, None], -1e30)
    plan = log_a[..., None] + torch.stack([F.logsigmoid(-mk.log_odds), F.logsigmoid(mk.log_odds)], -1)
    y = torch.tensor([0.0, 1.0], dtype=torch.float64)
    logk = torch.where(valid[..., None], plan - (mk.normalised_scores()[..., None] - y) ** 2 / mk.eps, -1e30)
    log_b = torch.stack([torch.log1p(-mk.keep), torch.log(mk.keep)], 1)
    f, g = torch.zeros_like(log_a), torch.zeros_like(log_b)
    for _ in range(sweeps):
        f = torch.where(valid, log_a - torch.logsumexp(logk + g[:, None, :], 2), 0.0)
        g = log_b - torch.logsumexp(logk + f[..., None], 1)
    if not project:
        return torch.where(valid, n[:, None] * torch.exp(logk[..., 1] + f + g[:, None, 1]), 0.0)
    u = torch.where(valid, logk[..., 1] + g[:, None, 1] - logk[..., 0] - g[:, None, 0], -1e30)
    c = torch.zeros_like(n)
    with torch.no_grad():  # Newton on sum(sigmoid(u + c)) = k ...
        for _ in range(50):
            s = torch.sigmoid(u + c[:, None])
            c = c - ((s.sum(1) - mk.keep * n) / (s * (1 - s)).sum(1)).clamp(-4.0, 4.0)
    s = torch.sigmoid(u + c[:, None])  # ... and one more step with autograd: the implicit-function gradient
    return torch.sigmoid(u + (c - (s.sum(1) - mk.keep * n) / (s * (1 - s)).sum(1))[:, None])


def test_closed_form_step_is_the_sinkhorn_fixed_point():
    """The module's closed-form step equals Sinkhorn sweeps + projection for any number of sweeps (masks and
    gradients), and thousands of sweeps without the projection converge to it: the sweeps are redundant."""
    torch.manual_seed(0)
    sizes, keeps = [12, 5, 9], [0.25, 0.6, 1 / 3]
    mk = TransportMasks(sizes, keeps, [torch.randn(n) for n in sizes], eps=0.7).train()
    for step in range(8):
        w = torch.randn(3, 12, dtype=torch.float64)
        grads = []
        for sweeps in (1, 5):
            mk.scores.grad = None
            m = _literal_step(mk, sweeps)
            (m * w).sum().backward()
            grads.append((m.detach(), mk.scores.grad.clone()))
        with torch.no_grad():
            converged = _literal_step(mk, 3000, project=False)
        mk.scores.grad = None
        m = mk()  # the module's step (updates its plan)
        (m.double() * w).sum().backward()
        for lm, lg in grads:
            assert torch.allclose(lm, m.double(), atol=1e-6) and torch.allclose(lg, mk.scores.grad, atol=1e-6)
        assert torch.allclose(converged, mk.current.double(), atol=1e-5), (converged - mk.current).abs().max()
        with torch.no_grad():
            mk.scores.add_(0.3 * torch.randn_like(mk.scores))  # a training step moves the scores


def test_projection_gradient_matches_finite_differences():
    """Project's closed-form backward (implicit function theorem) against numerical differentiation, for u
    and for k (the FLOPs budget's path), with padding."""
    from otcompress.dtp.masks import NEG, Project

    torch.manual_seed(0)
    valid = torch.arange(7)[None, :] < torch.tensor([7, 4])[:, None]
    u = torch.where(valid, torch.randn(2, 7, dtype=torch.float64), NEG).requires_grad_()
    k = torch.tensor([2.5, 1.2], dtype=torch.float64, requires_grad=True)
    f = lambda u, k: Project.apply(torch.where(valid, u, NEG), k, valid, None, 40)[0]  # noqa: E731
    assert torch.allclose(f(u, k).sum(1), k)
    assert torch.autograd.gradcheck(f, (u, k), eps=1e-6, atol=1e-6)


def test_masking_through_bn_affine_equals_scaling_the_output():
    """At affine BN points the mask scales BN's weight and bias (functional_call), elsewhere the output
    (hook): outputs and the gradients of weights and scores equal an explicit output multiply everywhere."""
    import copy

    import torch.nn as nn

    from otcompress.dtp.masked import MaskedNet

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1),
                        nn.ReLU(), nn.Conv2d(6, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).train()
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5), net[1].bias.uniform_(-0.5, 0.5)
    from otcompress.channels.groups import Slice

    points = [[Slice("1", net[1], "channel", torch.arange(8)[:, None], ("weight", "bias"))],  # a BN point
              [Slice("3", net[3], "out", torch.arange(6)[:, None], ("weight", "bias"))]]  # a producer without BN
    mk = TransportMasks([8, 6], [0.5, 0.5], [torch.randn(8), torch.randn(6)], eps=0.5)
    ref_net, ref_mk = copy.deepcopy(net), copy.deepcopy(mk)
    masked = MaskedNet(net, mk, None).train()
    assert len(masked.attach(points)) == 1  # only the producer needs a hook
    live = {}
    for j, pt in enumerate([ref_net[1], ref_net[3]]):
        pt.register_forward_hook(lambda mod, i, out, j=j: out * live["m"][j, : out.shape[1]].float().view(1, -1, 1, 1))
    x = torch.randn(5, 3, 10, 10)
    for step in range(3):
        masked.zero_grad(), ref_net.zero_grad(), ref_mk.zero_grad()
        out = masked(x)
        live["m"] = ref_mk.train()()
        ref = ref_net(x)
        assert torch.allclose(out, ref, atol=1e-5)
        (out ** 2).sum().backward()
        (ref ** 2).sum().backward()
        for (name, a), b in zip(net.named_parameters(), ref_net.parameters()):
            assert torch.allclose(a.grad, b.grad, atol=1e-4, rtol=1e-4), name
        assert torch.allclose(mk.scores.grad, ref_mk.scores.grad, atol=1e-4, rtol=1e-4)
    assert torch.allclose(net[1].running_mean, ref_net[1].running_mean)  # BN statistics still update


def test_masks_harden_and_pick_the_known_good_channels():
    """y depends on 4 of 16 inputs; scores and weights trained jointly must keep exactly those 4."""
    torch.manual_seed(0)
    n, k, good = 16, 4, [1, 5, 9, 14]
    X = torch.randn(512, n)
    w_true = torch.zeros(n)
    w_true[good] = torch.tensor([2.0, -1.5, 1.0, 2.5])
    y = X @ w_true
    mk = TransportMasks([n], [k / n], [torch.zeros(n) + 0.01 * torch.randn(n)], eps=0.5).train()
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
    assert m.argsort(descending=True)[:k].sort().values.tolist() == good  # the hard mask: top-k of the soft one


def test_no_nan_at_small_eps():
    mk = TransportMasks([8, 5], [0.5, 0.4], [torch.randn(8), torch.randn(5)], eps=1e-5).train()
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
    """Ctrl-C mid-stage (after mask epoch 1, after fine-tune epoch 1): exit 130, nothing written in place of
    the output, and --resume gives the same weights as an uninterrupted run."""
    p = dtp_recipe(tmp_path, "sparsity = 0.5", stages_after=False)
    assert run_cli("run", p, "--out", tmp_path / "full", "--quiet").exit_code == 0
    for stop, at_epoch in (("mask1", 2), ("finetune1", 4)):
        out = tmp_path / f"part-{stop}"
        r = interrupted_run(["run", p, "--out", out, "--quiet"], at_epoch)
        assert r.returncode == 130 and not out.exists(), r.stderr[-2000:]
        assert "interrupted" in r.stderr and "Traceback" not in r.stderr
        r = subprocess.run([sys.executable, "-m", "otcompress.cli", "run", str(p), "--out", str(out), "--quiet", "--resume"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        a, b = _weights(tmp_path / "full" / "compressed.safetensors"), _weights(out / "compressed.safetensors")
        assert a.keys() == b.keys()
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-5), (stop, k)


def test_resume_from_an_incompatible_checkpoint_is_a_clear_error(tmp_path):
    from otcompress.artifacts import staging_path

    p = dtp_recipe(tmp_path, "sparsity = 0.5", stages_after=False)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "otcompress.cli", "run", str(p), "--out", str(out), "--quiet"]
    assert interrupted_run(cmd[3:], 2).returncode == 130
    ck = staging_path(out) / "checkpoints" / "stage0-dtp.pt"
    state = torch.load(ck, weights_only=False)
    state["model"]["masks.log_plan"] = state["model"].pop("masks.log_odds")  # as an older version wrote it
    torch.save(state, ck)
    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True)
    assert r.returncode == 2 and "cannot resume the mask phase" in r.stderr and str(ck) in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr


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
    from otcompress.training.loop import augment, augment_plan

    x = torch.arange(40 * 3 * 8 * 8, dtype=torch.float32).reshape(40, 3, 8, 8)
    plan = augment_plan(40, 8, seed=3, epoch=1)
    whole = augment(x, torch.arange(40), plan, "crop_flip")
    for idx in (torch.tensor([5, 7]), torch.tensor([5, 39]), torch.tensor([0, 5, 20])):
        part = augment(x[idx], idx, plan, "crop_flip")
        assert torch.equal(part, whole[idx])
    assert not torch.equal(whole, x)  # it does augment


def test_resume_with_dtp_then_finetune_uses_one_checkpoint_per_stage(tmp_path):
    """Was: both stages shared checkpoints/dtp.pt, so --resume hit KeyError 'keep' or fine-tuned 0 epochs."""
    p = dtp_recipe(tmp_path, "sparsity = 0.5", stages_after=False)
    p.write_text(p.read_text() + '[[stages]]\nkind = "finetune"\nepochs = 2\nbatch_size = 64\naugment = "crop"\ndevice = "cpu"\n')
    assert run_cli("run", p, "--out", tmp_path / "full", "--quiet").exit_code == 0
    r = interrupted_run(["run", p, "--out", tmp_path / "o", "--quiet"], at_epoch=6)  # the finetune stage's 2nd epoch
    assert r.returncode == 130
    ckpts = sorted(x.name for x in (tmp_path / ".o.partial" / "checkpoints").iterdir())
    assert ckpts == ["stage0-dtp.pt", "stage1-finetune.pt"]
    r = subprocess.run([sys.executable, "-m", "otcompress.cli", "run", str(p), "--out", str(tmp_path / "o"), "--quiet",
                        "--resume"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    ft = next(s for s in rep["stages"] if s["kind"] == "finetune")
    assert [h["epoch"] for h in ft["details"]["history"]] == [1, 2]
    full = json.loads((tmp_path / "full" / "report.json").read_text())
    assert abs(full["stages"][-1]["accuracy"] - rep["stages"][-1]["accuracy"]) < 1e-6
