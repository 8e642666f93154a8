"""compare's picture: every seed as a point, each side's mean and 95% interval."""

from __future__ import annotations

from pathlib import Path


def plot_comparison(result: dict, out: Path, names: tuple[str, str]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(5.5, 4.2), dpi=120)
    rng = np.random.default_rng(0)  # jitter only spreads the points sideways
    for x, side in enumerate(("a", "b")):
        values = 100 * np.asarray(result[f"values_{side}"])
        ax.scatter(x + rng.uniform(-0.12, 0.12, len(values)), values, s=18, alpha=0.6,
                   color=("tab:blue", "tab:orange")[x], zorder=2)  # fmt: skip
        mean = 100 * result[f"mean_{side}"]
        low, high = (100 * v for v in result[f"ci95_{side}"])
        ax.errorbar(x + 0.3, mean, yerr=[[mean - low], [high - mean]], fmt="s", color="black",
                    capsize=6, zorder=3, label="mean, 95% interval" if x == 0 else None)  # fmt: skip
        ax.annotate(f"{mean:.2f}%", (x + 0.36, mean), va="center", fontsize=9)
    ax.set_xticks(
        [0, 1], [f"A: {names[0]}\n(n={result['n_a']})", f"B: {names[1]}\n(n={result['n_b']})"]
    )
    ax.set_xlim(-0.5, 1.8)
    ax.set_ylabel("test accuracy (%)")
    low, high = (100 * v for v in result["ci95"])
    ax.set_title(f"B - A = {100 * result['difference']:+.2f} points "
                 f"[{low:+.2f}, {high:+.2f}], p = {result['p_value']:.3g}", fontsize=10)  # fmt: skip
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="best", fontsize=8)  # each point: one seed's final accuracy
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
