"""Plot qvl vit sweep results: top-1 accuracy against test resolution, one line per variant, error bars =
sample std over seeds; one panel per position mode.

    python scripts/plot_vit.py results/vit/fashion_mnist.json results/vit/fashion_mnist.png

Needs matplotlib (scripts/plot_env.sh makes a small environment with it). Writes to a temporary and renames.
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src, dst):
    with open(src) as f:
        agg = json.load(f)
    modes = ["extend", "rescale"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    styles = ["-", "--", ":", "-."]
    for ax, mode in zip(axes, modes):
        for i, v in enumerate(agg["variants"]):
            acc = v["accuracy"].get(mode, {})
            res = sorted(acc, key=int)
            if not res:
                continue
            x = [int(r) for r in res]
            y = [100 * acc[r]["mean"] for r in res]
            e = [100 * acc[r]["std"] for r in res]
            ax.errorbar(x, y, yerr=e, label=f'{v["variant"]} (n={len(v["seeds"])})', capsize=3,
                        linestyle=styles[(i // 10) % len(styles)], marker="o", markersize=3)
        ax.axvline(28, color="grey", linewidth=0.5)
        ax.set_title(f"positions: {mode}")
        ax.set_xlabel("test resolution (px; trained at 28)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 accuracy (%), mean ± std over seeds")
    axes[1].legend(fontsize=8, loc="lower left")
    fig.suptitle(f'ViT position encodings on {agg["dataset"]} ({agg["runs"]} runs, {agg["cpu"]})')
    fig.tight_layout()
    tmp = dst + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, dst)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: plot_vit.py RESULTS.json OUT.png")
    main(sys.argv[1], sys.argv[2])
