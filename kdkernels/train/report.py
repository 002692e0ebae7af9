"""Plots and tables of the trainer: loss curves, AP bar chart, the AP comparison table."""
from __future__ import annotations

from pathlib import Path

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_losses(history: list, path: Path, title: str = "") -> None:
    if not history:
        return
    plt = _plt()
    keys = [k for k in history[0] if k not in ("iteration", "lr")]
    keys = sorted({k for row in history for k in row if k not in ("iteration", "lr")})
    fig, ax = plt.subplots(figsize=(7, 4))
    for k in keys:
        pts = [(r["iteration"], r[k]) for r in history if k in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k, lw=2 if k == "total" else 1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_ap_bars(results: dict, path: Path, title: str = "COCO AP on the val split") -> None:
    """results: {row name: {"AP": .., "AP50": .., ...}} → grouped bars."""
    plt = _plt()
    names = list(results)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(names)), 4))
    width = 0.8 / 3
    for i, metric in enumerate(("AP", "AP50", "AP75")):
        xs = [j + (i - 1) * width for j in range(len(names))]
        ax.bar(xs, [results[n].get(metric, 0.0) for n in names], width, label=metric)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=15, fontsize=8)
    ax.set_ylabel("AP (%)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def ap_table(results: dict) -> str:
    """Markdown table of AP metrics (percent), one row per model; "—" where COCOeval has no value
    (no ground truth of that size in the val split)."""
    def cell(v):
        return "—" if v is None or v != v else f"{v:.1f}"
    lines = ["| model | " + " | ".join(METRICS) + " |", "|---|" + "---:|" * len(METRICS)]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(cell(r.get(m)) for m in METRICS) + " |")
    return "\n".join(lines)
