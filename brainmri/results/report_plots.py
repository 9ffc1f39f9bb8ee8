"""The comparison as PNG plots: accuracy per recipe and validation curves (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from brainmri.atomic import atomic_path
from brainmri.results.comparison import Comparison, value_label


def _plt() -> Any:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_accuracy(cmp: Comparison, path: str | Path) -> Path:
    """Bar per recipe: mean accuracy of the selected config, 95% CI error bars, replicates ((fold, seed) pairs) as
    dots."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.5, 1.5 + 1.2 * len(cmp.recipes)), 4))
    for i, rr in enumerate(cmp.recipes):
        s = rr.stats["acc"]
        err = [[s.mean - s.ci_low], [s.ci_high - s.mean]] if s.n > 1 else None
        ax.bar(i, s.mean, yerr=err, capsize=6, color="C0" if rr.split == "test" else "C1", alpha=0.8)
        ax.scatter([i] * len(rr.runs), [r.summary.get(f"{rr.split}/acc") for r in rr.runs], color="k", s=12, zorder=3)
    ax.set_xticks(range(len(cmp.recipes)), [f"{rr.recipe}\n({rr.split}, n={rr.stats['acc'].n})"
                                            for rr in cmp.recipes], fontsize=8)
    ax.set_ylabel("accuracy (mean, 95% CI; dots = replicates)")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Accuracy per recipe\n(config chosen by {cmp.metric})", fontsize=10)
    return _save(fig, path)


def plot_val_curves(cmp: Comparison, path: str | Path, metric: str | None = None) -> Path:
    """Validation curve per recipe (selected config): mean ± std band over replicates per epoch."""
    plt, metric = _plt(), metric or cmp.metric
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, rr in enumerate(cmp.recipes):
        rows = [{"seed": str(r.seed), "x": h.get("epoch", h.get("_step")), "y": h[metric]}
                for r in rr.runs for h in r.history() if metric in h]
        if not rows:
            continue
        g = pd.DataFrame(rows).groupby("x")["y"].agg(["mean", "std"]).fillna(0.0)
        ax.plot(g.index, g["mean"], color=f"C{i}", label=f"{rr.recipe} ({value_label(rr.keys, rr.chosen)})")
        ax.fill_between(g.index, g["mean"] - g["std"], g["mean"] + g["std"], color=f"C{i}", alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{metric} (mean ± std over replicates)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".") or "png")
    _plt().close(fig)
    return path


def write_plots(cmp: Comparison, out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    return [plot_accuracy(cmp, out_dir / "accuracy.png"), plot_val_curves(cmp, out_dir / "val_curves.png")]
