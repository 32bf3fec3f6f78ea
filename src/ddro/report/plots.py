"""The report's figures (matplotlib, Agg). PNGs carry no timestamp or software version, so the
same inputs give byte-identical files."""
from __future__ import annotations

from pathlib import Path

from .data import NAMES

COLORS = {"bm25": "tab:gray", "sft": "tab:blue", "ddro": "tab:orange"}


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    _pyplot().close(fig)
    return path


def plot_beams(sweep: dict[str, dict[int, dict]], baseline: dict | None, metrics: list[str], title: str,
               path: Path) -> Path:
    """One panel per metric: each model's value against the beam size (log x axis)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for system, by_beam in sweep.items():
            sizes = [b for b in sorted(by_beam) if metric in by_beam[b]]  # R@k needs k beams
            ax.plot(sizes, [by_beam[b][metric] for b in sizes], marker="o", color=COLORS[system],
                    label=NAMES[system])
        if baseline is not None and metric in baseline:
            ax.axhline(baseline[metric], color=COLORS["bm25"], linestyle="--", label="BM25 (same queries)")
        ax.set_xscale("log")
        all_sizes = sorted({b for by_beam in sweep.values() for b in by_beam})
        ax.set_xticks(all_sizes, [str(b) for b in all_sizes])
        ax.minorticks_off()
        ax.set_xlabel("beam size")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return save(fig, path)


def plot_training(sft: dict[str, list], ddro: dict[str, list], title: str, path: Path) -> Path:
    """SFT loss per stage (stages one after the other on the step axis); DDRO loss; DDRO
    pairwise reward accuracy and margin."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    offset = 0
    for stage, points in sft.items():
        if points:
            axes[0].plot([offset + s for s, _ in points], [v for _, v in points], marker=".", label=stage)
            offset += max(s for s, _ in points)
    axes[0].set(title="SFT: token cross-entropy", xlabel="step (stages in order)", ylabel="loss")
    if ddro.get("loss"):
        axes[1].plot(*zip(*ddro["loss"]), marker=".", color=COLORS["ddro"])
    axes[1].set(title="DDRO: pairwise loss", xlabel="step", ylabel="loss")
    if ddro.get("reward accuracy"):
        axes[2].plot(*zip(*ddro["reward accuracy"]), marker=".", color="tab:green", label="reward accuracy")
    axes[2].set(title="DDRO: rewards", xlabel="step", ylabel="accuracy")
    if ddro.get("reward margin"):
        twin = axes[2].twinx()
        twin.plot(*zip(*ddro["reward margin"]), marker=".", color="tab:purple", label="reward margin")
        twin.set_ylabel("margin")
        twin.legend(loc="lower right", fontsize=8)
    for ax, empty in ((axes[0], not any(sft.values())), (axes[1], not ddro.get("loss")),
                      (axes[2], not ddro.get("reward accuracy"))):
        if empty:
            ax.text(0.5, 0.5, "no logged steps", ha="center", va="center", transform=ax.transAxes)
        elif ax is not axes[1]:
            ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return save(fig, path)


def plot_wins(diffs: list[float], counts: dict[str, int], metric: str, title: str, path: Path) -> Path:
    """Per-query DDRO - SFT difference, sorted: bars above zero are DDRO's wins."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.4))
    values = sorted(diffs, reverse=True)
    colors = [COLORS["ddro"] if v > 0 else COLORS["sft"] if v < 0 else "tab:gray" for v in values]
    ax.bar(range(len(values)), values, width=1.0, color=colors)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set(xlabel="queries (sorted by difference)", ylabel=f"{metric}: DDRO - SFT", xlim=(-0.5, len(values) - 0.5))
    ax.grid(axis="y", alpha=0.3)
    ax.text(0.99, 0.97, f"DDRO wins {counts['wins']}, ties {counts['ties']}, loses {counts['losses']}",
            ha="right", va="top", transform=ax.transAxes)
    fig.suptitle(title)
    fig.tight_layout()
    return save(fig, path)


def plot_logps(curves: dict[str, list], title: str, path: Path) -> Path:
    """The positive's and the negative's mean summed docid log-prob per logged DDRO step, one panel
    each (their scales differ by far more than the positive's drift), validation dashed."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, role, color in ((axes[0], "positive", "tab:green"), (axes[1], "negative", "tab:red")):
        for name, style, marker in ((role, "-", "."), (f"{role} (validation)", "--", "s")):
            if points := curves.get(name):  # the label says how far it moved, first to last logged step
                first, last = points[0][1], points[-1][1]
                ax.plot(*zip(*points), linestyle=style, marker=marker, color=color,
                        label=f"{name}: {first:.3f} to {last:.3f} ({last - first:+.3f})")
        if any(curves.get(name) for name in (role, f"{role} (validation)")):
            ax.legend(loc="best", fontsize=8)
        else:
            ax.text(0.5, 0.5, "no logged steps", ha="center", va="center", transform=ax.transAxes)
        ax.set(title=f"log p({role} docid | query)", xlabel="DDRO step", ylabel="summed log-prob")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return save(fig, path)


def plot_rank_transitions(counts: dict[tuple[str, str], int], buckets: tuple[str, ...], title: str,
                          path: Path) -> Path:
    """Queries per (SFT bucket, DDRO bucket) of the first relevant rank: cells left of the diagonal
    moved up under DDRO, right of it down."""
    plt = _pyplot()
    grid = [[counts[a, b] for b in buckets] for a in buckets]
    top = max(1, *(n for row in grid for n in row))
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.imshow(grid, cmap="Blues", vmin=0, vmax=top)
    for i, row in enumerate(grid):
        for j, n in enumerate(row):
            ax.text(j, i, str(n), ha="center", va="center", fontsize=10, color="white" if n > 0.6 * top else "black")
    ax.set_xticks(range(len(buckets)), buckets)
    ax.set_yticks(range(len(buckets)), buckets)
    ax.set(xlabel="DDRO: first relevant rank", ylabel="SFT: first relevant rank")
    fig.suptitle(title)
    fig.tight_layout()
    return save(fig, path)
