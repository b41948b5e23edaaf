"""The reliability diagram of any set of scores (is a score of 0.7 right 70% of the time?): what
``postergenre evaluate --reliability`` draws, and the figure of the calibration docs."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .._io import atomic_png  # noqa: E402
from .metrics import expected_calibration_error  # noqa: E402


def reliability_diagram(y_true, scores, path, n_bins: int = 15, title: str = "") -> Path:
    """PNG at ``path``: observed frequency of the genre vs mean score in each of ``n_bins``
    equal-width bins of every poster x genre score (``y_true``, ``scores``: ``(N, G)``), the
    diagonal of perfect calibration, the bins' counts below (log scale) and the ECE in the title.
    """
    y = (np.asarray(y_true) > 0).ravel().astype(float)
    s = np.asarray(scores, dtype=float).ravel()
    bins = np.clip((s * n_bins).astype(int), 0, n_bins - 1)  # as metrics.expected_calibration_error
    count = np.bincount(bins, minlength=n_bins)
    seen = count > 0
    mean_s = np.bincount(bins, s, n_bins)[seen] / count[seen]
    freq = np.bincount(bins, y, n_bins)[seen] / count[seen]
    edges = np.linspace(0, 1, n_bins + 1)

    fig, (ax, hx) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    ax.vlines(mean_s, np.minimum(mean_s, freq), np.maximum(mean_s, freq), color="tab:red", alpha=0.5, label="gap")
    ax.plot(mean_s, freq, marker="o", color="tab:blue", label="observed frequency")
    ax.set(ylabel="fraction of posters with the genre", xlim=(0, 1), ylim=(0, 1), aspect="auto")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ece = expected_calibration_error(y, s, n_bins)
    ax.set_title(f"{title + chr(10) if title else ''}ECE {ece:.4f}  ({len(s)} poster x genre scores, {n_bins} bins)",
                 fontsize=10)
    hx.bar(edges[:-1], count, width=1 / n_bins, align="edge", color="tab:blue",
           alpha=0.6, edgecolor="white", log=True)
    hx.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor log labels crowd a short axis
    if seen.any():  # start at a power of ten so the axis always has two labelled decades
        hx.set_ylim(bottom=10.0 ** np.floor(np.log10(count[seen].min())) * 0.99)
    hx.set(xlabel="score (mean in each bin above)", ylabel="scores per bin")
    hx.grid(alpha=0.3, axis="y")
    path = Path(path)
    atomic_png(path, fig)
    return path
