"""Training curves as PNGs: what a user looks at after ``train-sft``, ``refresh`` and ``train-rl``."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the headless backend


def save_curves(history: dict[str, list[float]], path: str | Path, xlabel: str = "step") -> Path:
    """One panel per curve, raw and smoothed (window 20), as a PNG."""
    fig, axes = plt.subplots(1, len(history), figsize=(4.4 * len(history), 3.5))
    for ax, (key, values) in zip(np.atleast_1d(axes), history.items(), strict=True):
        values = np.asarray(values)
        ax.plot(values, alpha=0.3)
        if len(values) >= 20:
            ax.plot(np.convolve(values, np.ones(20) / 20, mode="valid"))
        ax.set_title(key.replace("_", " "))
        ax.set_xlabel(xlabel)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
