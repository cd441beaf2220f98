"""Plot channel-shrinking fidelity results (top-1 and logit distance vs sparsity) from one or more JSON files.

    .venv/bin/python bench/plot_channels.py bench/results/channels_fidelity.json bench/results/channels_fidelity_cifar_jpeg.json
"""

import json
import sys
from pathlib import Path


def plot(paths, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for p in paths for r in json.loads(Path(p).read_text())]
    names = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(2, len(names), figsize=(4 * len(names), 7), squeeze=False)
    for j, name in enumerate(names):
        for method in ("prune", "intrafusion-merge", "intrafusion-exact", "intrafusion-reference"):
            rs = [r for r in rows if r["model"] == name and r["method"] == method]
            axes[0][j].plot([r["sparsity"] for r in rs], [100 * r["top1"] for r in rs], marker="o", label=method)
            axes[1][j].plot([r["sparsity"] for r in rs], [r["mean_logit_l2"] for r in rs], marker="o", label=method)
        axes[0][j].axhline(100 * rs[0]["top1_original"], color="gray", ls=":", label="original")
        axes[0][j].set_title(name)
        axes[0][j].set_ylabel("top-1 (%)")
        axes[1][j].set_ylabel("mean logit l2 to original")
        axes[1][j].set_xlabel("sparsity (all prunable groups)")
        axes[1][j].set_yscale("log")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)


if __name__ == "__main__":
    plot(sys.argv[1:], Path(sys.argv[1]).with_name("channels_fidelity_all.png"))
