"""Regenerate the quickstart's data and weights from scikit-learn's bundled digits dataset (offline).

    .venv/bin/python scripts/make_quickstart.py

Writes recipes/data/digits-{train,test}.npz (8x8 grayscale as uint8 0..255, NHWC) and
recipes/data/digits_cnn.safetensors (the zoo's `digits_cnn`, width 16)."""

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from sklearn.datasets import load_digits

from otcompress.models import build_model

OUT = Path(__file__).resolve().parent.parent / "recipes" / "data"
MEAN, STD = 0.3063, 0.3769  # of the training split, x/255


def main():
    torch.manual_seed(0)
    d = load_digits()
    x = np.clip(d.images * 16, 0, 255).astype(np.uint8)[..., None]  # (N, 8, 8, 1)
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(x))
    tr, te = perm[:1437], perm[1437:]
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT / "digits-train.npz", x=x[tr], y=y[tr])
    np.savez_compressed(OUT / "digits-test.npz", x=x[te], y=y[te])

    def prep(a):
        return (torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255 - MEAN) / STD

    xtr, ytr, xte, yte = prep(x[tr]), torch.from_numpy(y[tr]), prep(x[te]), torch.from_numpy(y[te])
    model = build_model("digits_cnn", {}).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    epochs = 40
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=epochs * ((len(xtr) + 63) // 64))
    for ep in range(epochs):
        order = torch.randperm(len(xtr))
        for i in range(0, len(xtr), 64):
            idx = order[i:i + 64]
            xb = xtr[idx]
            shift = torch.randint(-1, 2, (2,))
            xb = torch.roll(xb, shifts=(int(shift[0]), int(shift[1])), dims=(2, 3))
            loss = F.cross_entropy(model(xb), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        acc = (model(xte).argmax(-1) == yte).float().mean().item()
    print(f"test accuracy {acc:.4f}")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(OUT / "digits_cnn.safetensors"))


if __name__ == "__main__":
    main()
