"""Plots people look at: the training loss curve, and the two helpers every PNG of the project uses."""
from __future__ import annotations

import json

import numpy as np

from durableio import atomic_write


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, png_path: str, dpi: float | None = None) -> str:
    """Lay the figure out, write it as PNG atomically, close it."""
    fig.tight_layout()
    with atomic_write(png_path) as f:
        fig.savefig(f, format="png", dpi=dpi)
    pyplot().close(fig)
    return png_path


def plot_loss(log_path: str, png_path: str, window: int = 50) -> str:
    """Per-step eps loss (light) and its running mean over `window` steps, log-scaled, as a PNG."""
    plt = pyplot()
    with open(log_path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    steps = np.array([r["step"] for r in records])
    loss = np.array([r["loss"] for r in records])
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, loss, color="tab:blue", alpha=0.25, linewidth=0.8, label="loss")
    if len(loss) >= window:
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], smooth, color="tab:blue", label=f"mean of {window}")
    ax.set(xlabel="step", ylabel="eps MSE", yscale="log", title="training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, png_path)
