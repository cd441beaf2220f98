"""Bad input: every case ends with its documented exit code and one line naming the file, key, layer or
value, never a Python traceback; inputs are never modified and nothing already written is lost. The table
in the README lists these cases (README: "What bad input does")."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from .conftest import ROOT, interrupted_run, run_cli

DIGITS = ROOT / "recipes" / "data"


def base(ckpt="data/digits_cnn.safetensors", arch="digits_cnn", stages=None, data=True, extra=""):
    stages = stages or '[[stages]]\nkind = "fold_bn"\n[[stages]]\nkind = "prune"\nsparsity = 0.5\n'
    d = ('[data]\neval = "data/digits-test.npz"\ntrain = "data/digits-train.npz"\nmean = [0.3063]\nstd = [0.3769]\n'
         if data else "")
    return (f'name = "bad"\n{extra}[model]\narch = "{arch}"\n' + (f'checkpoint = "{ckpt}"\n' if ckpt else "")
            + f"input_shape = [1, 1, 8, 8]\n{d}{stages}")


def _digest(folder):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def work(tmp_path):
    shutil.copytree(DIGITS, tmp_path / "data")
    return tmp_path


def _check(res, code, fragments, work, before, out_exists=False):
    out = res.output
    assert res.exit_code == code, out
    for f in fragments:
        assert f in out, (f, out)
    assert "Traceback" not in out
    assert _digest(work / "data") == before  # inputs are never written
    assert (work / "out").exists() == out_exists


def _torch_file(path, obj):
    torch.save(obj, path)


CASES = {
    "truncated safetensors": (lambda w: (w / "data" / "digits_cnn.safetensors").write_bytes(
        (DIGITS / "digits_cnn.safetensors").read_bytes()[:500]), base(), 2, ["digits_cnn.safetensors", "not a readable safetensors"]),
    "corrupt safetensors": (lambda w: (w / "data" / "digits_cnn.safetensors").write_bytes(os.urandom(4096)), base(), 2,
                            ["digits_cnn.safetensors", "not a readable safetensors"]),
    "a .pt holding a pickle payload": (lambda w: _torch_file(w / "data" / "evil.pt", {"model": print}),
                                       base(ckpt="data/evil.pt"), 2, ["evil.pt", "weights_only=True"]),
    "a checkpoint of another architecture": (lambda w: None, base(arch="cifar_resnet20"), 2,
                                             ["digits_cnn.safetensors", "does not fit the model", "missing keys"]),
    "NaN weights": (lambda w: _nan_weights(w), base(ckpt="data/nan.safetensors"), 2, ["nan.safetensors", "NaN or Inf"]),
    "wrong input_shape": (lambda w: None, base().replace("[1, 1, 8, 8]", "[1, 3, 8, 8]"), 2, ["input_shape", "[1, 3, 8, 8]"]),
    "sparsity out of range": (lambda w: None, base().replace("sparsity = 0.5", "sparsity = 1.2"), 2,
                              ["stages[1].sparsity", "1.2", "[0, 1)"]),
    "keep out of range": (lambda w: None, base(arch="vit", ckpt=None, stages='[[stages]]\nkind = "tokens"\nmethod = "tome"\nkeep = 0.3\n'),
                          2, ["stages[0].keep", "0.3", "[0.5, 1]"]),
    "a recipe that is not TOML": (lambda w: None, "name = [unclosed\n", 2, ["not valid TOML"]),
    "an unknown stage kind": (lambda w: None, base().replace('kind = "prune"', 'kind = "prnue"'), 2,
                              ["stages[1].kind", "did you mean 'prune'"]),
    "an unknown key": (lambda w: None, base().replace("sparsity = 0.5", "sparsity = 0.5\nsparsty = 1"), 2,
                       ["stages[1].sparsty", "did you mean 'sparsity'"]),
    "an unreadable data file": (lambda w: (w / "data" / "digits-test.npz").write_text("not numpy"), base(), 2,
                                ["digits-test.npz", "not a readable .npz"]),
    "a mis-shaped data file": (lambda w: np.savez(w / "data" / "digits-test.npz", x=np.zeros((4, 5, 5, 1), np.uint8),
                                                  y=np.zeros(4, np.int64)), base(), 2,
                               ["digits-test.npz", "[1, 5, 5]", "model.input_shape"]),
    "labels missing for training": (lambda w: np.savez(w / "data" / "digits-train.npz", x=np.zeros((4, 8, 8), np.uint8)),
                                    base(stages='[[stages]]\nkind = "dtp"\nsparsity = 0.5\n'), 2,
                                    ["stages[0]", "has no labels"]),
    "dtp from a data-reading importance": (lambda w: None, base(stages='[[stages]]\nkind = "dtp"\nsparsity = 0.5\n'
                                                                'importance = "reconstruction"\n'), 2,
                                           ["stages[0].importance", "data-free", "'l1'"]),
    "a model whose outputs depend on the images' content": (
        lambda w: (w / "tuplenet.py").write_text(TUPLENET), base(arch="tuplenet:build", ckpt=None),
        2, ["tuplenet:build", "output '1'", "post-NMS detections cannot be exported with static shapes"]),
    "a model with nothing to shrink": (lambda w: (w / "tiny.py").write_text(TINY), base(arch="tiny:build", ckpt=None), 2,
                                       ["stages[1] (prune)", "nothing to shrink", "model output"]),
    "an unknown ViT config": (lambda w: None, base(arch="vit", ckpt=None, extra="").replace(
        'arch = "vit"', 'arch = "vit"\nargs = {config = "deit_huge"}'), 2, ["deit_huge", "deit_tiny"]),
    "finetune with nothing compressed": (lambda w: None, base(stages='[[stages]]\nkind = "finetune"\n'), 2,
                                         ["stages[0]", "finetune needs a channel stage", "or a tokens stage"]),
    "dynamic_batch disagreeing between exports": (lambda w: None, base(stages=(
        '[[stages]]\nkind = "export_onnx"\ndynamic_batch = true\n[[stages]]\nkind = "export_tensorrt"\ndynamic_batch = false\n')),
        2, ["stages[1]: dynamic_batch = false", "disagrees"]),
    "a stage after the export that changes the model": (lambda w: None, base(stages=(
        '[[stages]]\nkind = "export_onnx"\n[[stages]]\nkind = "prune"\nsparsity = 0.5\n')), 2,
        ["stages[1]", "changes the model after it was exported"]),
}

TUPLENET = """
import torch.nn as nn
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 10)
    def forward(self, x):  # a tuple is fine; the second output's size depends on the values (post-NMS-like)
        y = self.fc(self.conv(x).mean((2, 3)))
        return y, y[:, :1][y[:, :1] > 0]
def build():
    return Net()
"""
TINY = """
import torch.nn as nn
def build():
    return nn.Sequential(nn.Conv2d(1, 10, 8), nn.Flatten())
"""


def _nan_weights(w):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(DIGITS / "digits_cnn.safetensors"))
    sd["conv2.weight"][0, 0, 0, 0] = float("nan")
    save_file(sd, str(w / "data" / "nan.safetensors"))


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_with_its_code_and_names_the_problem(name, work, monkeypatch):
    setup, text, code, fragments = CASES[name]
    setup(work)
    monkeypatch.syspath_prepend(str(work))
    recipe = work / "r.toml"
    recipe.write_text(text)
    before = _digest(work / "data")
    res = run_cli("run", recipe, "--out", work / "out")
    _check(res, code, fragments, work, before)
    assert len([line for line in res.output.strip().splitlines() if line.startswith("error:")]) == 1


COMMANDS = {  # bad arguments to the other commands: (argv after the command, exit code, fragments)
    "bench --batch 0": (lambda w, a: ["bench", a, "--batch", "0"], 2, ["--batch '0'", "positive integers"]),
    "bench on a folder that is not a run": (lambda w, a: ["bench", w / "data"], 2, ["no compressed.safetensors"]),
    "validate a corrupt model.onnx": (lambda w, a: ["validate", _corrupt_onnx(a)], 2, ["model.onnx", "not a valid ONNX model"]),
    "sweep with a bad --flops": (lambda w, a: ["sweep", w / "r.toml", "--flops", "0.5,abc"], 2, ["--flops", "fractions"]),
    "sweep without a channel stage": (lambda w, a: ["sweep", _no_channel_stage(w), "--flops", "0.5"], 2,
                                      ["nochannel.toml", "sweep needs a channel stage"]),
    "sweep --set to a stage kind it cannot vary": (lambda w, a: ["sweep", w / "r.toml", "--flops", "0.5", "--set",
                                                                 'stages.1.kind="fold_bn"'], 2, ["stages[1].sparsity", "unknown key"]),
    "load a file that is not safetensors": (lambda w, a: ["load", w / "data" / "digits-test.npz"], 2,
                                            ["digits-test.npz", "not a readable safetensors"]),
}


def _no_channel_stage(w):
    (w / "nochannel.toml").write_text(base(stages='[[stages]]\nkind = "fold_bn"\n'))
    return w / "nochannel.toml"


def _corrupt_onnx(artifact):
    bad = artifact.parent / "corrupt"
    shutil.copytree(artifact, bad)
    (bad / "model.onnx").write_bytes(b"garbage")
    return bad


@pytest.mark.parametrize("name", list(COMMANDS))
def test_bad_arguments_to_the_other_commands(name, work, tmp_path_factory):
    (work / "r.toml").write_text(base(stages='[[stages]]\nkind = "fold_bn"\n[[stages]]\nkind = "prune"\nsparsity = 0.5\n'
                                            '[[stages]]\nkind = "export_onnx"\n'))
    artifact = tmp_path_factory.mktemp("run") / "a"
    if name.startswith(("bench", "validate")):
        assert run_cli("run", work / "r.toml", "--out", artifact, "--quiet").exit_code == 0
    argv, code, fragments = COMMANDS[name]
    before = _digest(work / "data")
    res = run_cli(*argv(work, artifact))
    _check(res, code, fragments, work, before)


def test_an_existing_output_folder_is_kept_without_force(work):
    recipe = work / "r.toml"
    recipe.write_text(base())
    assert run_cli("run", recipe, "--out", work / "out", "--quiet").exit_code == 0
    first = _digest(work / "out")
    before = _digest(work / "data")
    res = run_cli("run", recipe, "--out", work / "out")
    _check(res, 2, ["out", "exists", "--force"], work, before, out_exists=True)
    assert _digest(work / "out") == first


def test_an_internal_error_is_one_line_naming_the_stage_with_the_traceback_in_a_file(work, monkeypatch):
    (work / "flaky.py").write_text("""
import torch.nn as nn
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 10)
    def forward(self, x):
        if x.shape[0] > 1:
            raise ZeroDivisionError("a bug of the model's own")
        return self.fc(self.conv(x).mean((2, 3)))
def build():
    return Net()
""")
    monkeypatch.syspath_prepend(str(work))
    recipe = work / "r.toml"
    recipe.write_text(base(arch="flaky:build", ckpt=None))
    res = run_cli("run", recipe, "--out", work / "out")
    assert res.exit_code == 3 and "Traceback" not in res.output
    line = res.output.strip().splitlines()[-1]
    assert line.startswith("internal error in measuring the original model") and "ZeroDivisionError" in line
    log = line.rsplit("full traceback in ", 1)[1].strip()
    assert "Traceback" in open(log).read() and "a bug of the model's own" in open(log).read()
    assert not (work / "out").exists()


def test_two_runs_racing_into_one_folder_leave_one_whole_result(work):
    """A CI matrix starts two runs into the same --out: one gets the folder, the other a clear message."""
    recipe = work / "r.toml"
    recipe.write_text(base(stages='[[stages]]\nkind = "dtp"\nsparsity = 0.5\nmask_epochs = 8\nfinetune_epochs = 8\n'
                                  'batch_size = 32\ndevice = "cpu"\n'))
    cmd = [sys.executable, "-m", "otcompress.cli", "run", str(recipe), "--out", str(work / "out"), "--quiet"]
    first = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    for _ in range(600):  # the first run holds the lock once its staging folder exists
        if (work / ".out.partial").exists() or first.poll() is not None:
            break
        time.sleep(0.1)
    second = subprocess.run(cmd, capture_output=True, text=True)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert second.returncode == 2 and "another otcompress run is writing to this folder" in second.stderr
    assert "Traceback" not in second.stderr
    rep = json.loads((work / "out" / "report.json").read_text())
    for name, digest in rep["files"].items():
        assert hashlib.sha256((work / "out" / name).read_bytes()).hexdigest() == digest


def test_an_interrupted_run_keeps_the_previous_result_and_resumes(work):
    recipe = work / "r.toml"
    recipe.write_text(base(stages='[[stages]]\nkind = "dtp"\nsparsity = 0.5\nmask_epochs = 2\nfinetune_epochs = 1\n'
                                  'batch_size = 64\ndevice = "cpu"\n'))
    assert run_cli("run", recipe, "--out", work / "out", "--quiet").exit_code == 0
    previous = _digest(work / "out")
    r = interrupted_run(["run", recipe, "--out", work / "out", "--quiet", "--force"], at_epoch=2)
    assert r.returncode == 130 and "interrupted" in r.stderr and "Traceback" not in r.stderr
    assert _digest(work / "out") == previous  # the previous result is intact
    r = subprocess.run([sys.executable, "-m", "otcompress.cli", "run", str(recipe), "--out", str(work / "out"), "--quiet",
                        "--force", "--resume"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _digest(work / "out") != previous
