"""PNG writers for the spike, energy and conversion-error analyses.

Figures are drawn on a bare `Figure` with the Agg canvas: no pyplot state, no
display, whatever backend the rest of the process uses.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plot_layer_spikes(path, runs: Mapping[str, Mapping[str, float]], ylabel: str = "spikes per image",
                      title: str = "Spikes per layer", log: bool = False) -> Path:
    """Grouped bars: one group per layer, one bar per run (e.g. PMSM beside QCFS, Fig. 4)."""
    layers: list[str] = []
    for per_layer in runs.values():
        layers += [n for n in per_layer if n not in layers]
    x = np.arange(len(layers))
    width = 0.8 / max(len(runs), 1)
    fig = Figure(figsize=(max(6.0, 0.45 * len(layers) + 2), 4))
    ax = fig.add_subplot()
    for i, (label, per_layer) in enumerate(runs.items()):
        values = [float(per_layer.get(n, 0.0)) for n in layers]
        ax.bar(x + (i - (len(runs) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(layers, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log:
        ax.set_yscale("log")
    ax.legend()
    return _save(fig, path)


def plot_conversion_error(path, errors: Mapping[str, Sequence[float]], mean: Sequence[float] | None = None,
                          title: str = "Conversion error over time", log: bool = True) -> Path:
    """One curve per layer: mean |average PSP up to T − QANN activation| against T (Fig. 6)."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for name, e in errors.items():
        ax.plot(np.arange(1, len(e) + 1), e, lw=1, alpha=0.7, label=name)
    if mean is not None:
        ax.plot(np.arange(1, len(mean) + 1), mean, "k-", lw=2.5, label="mean over layers")
    ax.set_xlabel("timesteps T")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("mean |PSP avg − ANN activation|")
    ax.set_title(title)
    values = np.concatenate([np.asarray(e, float) for e in errors.values()]) if errors else np.zeros(0)
    if log and np.any(values > 0):
        # zeros (lossless steps) cannot sit on a log axis: symlog keeps them visible at 0
        positive = values[values > 0].min()
        ax.set_yscale("symlog", linthresh=positive)
    if len(errors) <= 24:
        ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)


def plot_accuracy_over_time(path, runs: Mapping[str, Sequence[float] | Mapping[int, float]],
                            reference: Mapping[str, float] | None = None,
                            title: str = "Accuracy over time", log_x: bool = False) -> Path:
    """Accuracy against T per run: a sequence is read as T = 1, 2, ..., a mapping as {T: accuracy}.
    `reference` draws horizontal lines (e.g. the QANNs' accuracy); log_x spaces T = 1..64 evenly
    by powers of two. Accuracies come as fractions (as in metrics.json) and are drawn in percent."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for label, acc in runs.items():
        steps, values = (list(acc.keys()), list(acc.values())) if isinstance(acc, Mapping) \
            else (list(range(1, len(acc) + 1)), list(acc))
        ax.plot(steps, 100 * np.asarray(values, float), "o-", ms=3, label=label)
    for label, acc in (reference or {}).items():
        ax.axhline(100 * acc, ls="--", lw=1, color="gray")
        ax.annotate(label, (1, 100 * acc), fontsize=7, color="gray", va="bottom")
    ax.set_xlabel("timesteps T")
    if log_x:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.legend(loc="lower right")
    return _save(fig, path)
