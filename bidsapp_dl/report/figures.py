"""The report's figures, as PNG bytes (matplotlib, Agg, no pyplot global state).

matplotlib is imported here only, when a figure is drawn, so that ``--help`` and the
participant level never pay for it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

DPI = 80


def _figure(width: float, height: float, **margins: float):
    """A figure with fixed margins (a layout engine would double the drawing time)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    fig.subplots_adjust(**{"left": .12, "right": .96, "bottom": .14, "top": .88, **margins})
    return fig


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def learning_curves(frame, metrics: Sequence[str], best: dict[str, int], title: str) -> bytes:
    """One panel per metric: train and validation against the epoch; dashed: the kept epochs."""
    metrics = [m for m in metrics if f"train_{m}" in frame or f"validation_{m}" in frame]
    n = max(len(metrics), 1)
    fig = _figure(3.6 * n, 2.8, left=.12 / n + .02, right=1 - .02 / n, wspace=.35, bottom=.16)
    axes = fig.subplots(1, max(len(metrics), 1), squeeze=False)[0]
    epochs = frame["epoch"].to_numpy()
    for ax, metric in zip(axes, metrics):
        for group, style in (("train", "-o"), ("validation", "-s")):
            column = f"{group}_{metric}"
            if column in frame:
                ax.plot(epochs, frame[column].to_numpy(dtype=float), style, markersize=3, label=group)
        if metric in best:
            ax.axvline(best[metric], color="grey", linestyle="--", linewidth=1,
                       label=f"best-{metric}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def roc(curves: Sequence[tuple[str, np.ndarray, np.ndarray, float]], title: str) -> bytes:
    """ROC curves ``(name, false positive rate, true positive rate, AUC)`` on one plot."""
    fig = _figure(3.8, 3.6, left=.18, bottom=.13, top=.92)
    ax = fig.subplots()
    for name, fpr, tpr, auc in curves:
        ax.plot(fpr, tpr, drawstyle="default", label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def scatter(points: Sequence[tuple[str, np.ndarray, np.ndarray]], title: str, label: str) -> bytes:
    """Predicted against true values, one colour per split, with the identity line."""
    fig = _figure(3.8, 3.6, left=.18, bottom=.13, top=.92)
    ax = fig.subplots()
    values = [v for _, t, p in points for v in (t, p) if len(v)]
    low, high = (float(np.nanmin(np.concatenate(values))), float(np.nanmax(np.concatenate(values)))) \
        if values else (0.0, 1.0)
    margin = 0.05 * (high - low or 1.0)
    ax.plot([low - margin, high + margin], [low - margin, high + margin], color="grey",
            linestyle="--", linewidth=1, label="identity")
    for name, true, predicted in points:
        ax.scatter(true, predicted, s=14, alpha=.8, label=name)
    ax.set_xlabel(f"true {label}")
    ax.set_ylabel(f"predicted {label}")
    ax.set_title(title, fontsize=9)
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(fontsize=7)
    return _png(fig)


def orthogonal_slices(volume: np.ndarray, centre: Sequence[int] | None = None) -> list[np.ndarray]:
    """Sagittal, coronal and axial slices through ``centre`` (default: the middle), for display.

    The volume's axes are X Y Z (RAS+ after minimal preprocessing): each slice is returned with
    superior (or anterior, for the axial one) up and the first remaining axis to the right.
    """
    x, y, z = (np.asarray(volume.shape[:3]) // 2) if centre is None else centre
    planes = (volume[x, :, :], volume[:, y, :], volume[:, :, z])
    return [np.asarray(p, dtype=np.float32).T[::-1] for p in planes]


def _window(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if not finite.size:
        return 0.0, 1.0
    low, high = np.percentile(finite, [1, 99])
    return float(low), float(high if high > low else low + 1)


def overlay(image: np.ndarray, saliency: np.ndarray | None, title: str) -> bytes:
    """Three orthogonal slices of ``image``, with ``saliency`` over it (hot, transparent when low)."""
    fig = _figure(7.2, 2.7, left=.01, right=.88, bottom=.02, top=.84, wspace=.05)
    axes = fig.subplots(1, 3)
    background = orthogonal_slices(image)
    low, high = _window(np.concatenate([b.ravel() for b in background]))
    maps = orthogonal_slices(saliency) if saliency is not None else [None] * 3
    top = max(float(np.nanmax(np.abs(saliency))), 1e-12) if saliency is not None else 1.0
    for ax, name, back, sal in zip(axes, ("sagittal", "coronal", "axial"), background, maps):
        ax.imshow(back, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
        if sal is not None:
            shown = np.ma.masked_less(np.abs(sal) / top, 0.2)
            last = ax.imshow(shown, cmap="hot", vmin=0, vmax=1, alpha=.6, interpolation="nearest")
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    if saliency is not None:
        fig.colorbar(last, cax=fig.add_axes((.9, .12, .015, .65)), label="|saliency| / max")
    fig.suptitle(title, fontsize=9)
    return _png(fig)


def reconstruction(inputs: np.ndarray, outputs: np.ndarray, title: str) -> bytes:
    """Input (top) and reconstruction (bottom): three orthogonal slices, or one 2D slice."""
    if inputs.ndim == 2:
        rows = [[inputs.T[::-1]], [outputs.T[::-1]]]
    else:
        rows = [orthogonal_slices(inputs), orthogonal_slices(outputs)]
    low, high = _window(np.concatenate([p.ravel() for p in rows[0]]))
    fig = _figure(2.4 * len(rows[0]) + 0.4, 4.8, left=.02, right=.98, bottom=.02, top=.88,
                  wspace=.05, hspace=.15)
    axes = fig.subplots(2, len(rows[0]), squeeze=False)
    for r, (name, panels) in enumerate(zip(("input", "output"), rows)):
        for c, panel in enumerate(panels):
            axes[r][c].imshow(panel, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
            axes[r][c].set_title(name, fontsize=8)
            axes[r][c].axis("off")
    fig.suptitle(title, fontsize=9)
    return _png(fig)
