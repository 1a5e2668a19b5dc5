"""Figures with matplotlib (Agg, no display): the study's heat map, bars and lines, and the embeddings.

Each builder returns a `matplotlib.figure.Figure` (bound to an Agg canvas, never to pyplot's global
state), so tests inspect its axes, ticks, texts and colour bar before anything is written;
`save_png` writes it small (100 dpi) and atomically.

    figure = heatmap_figure(values, ["crop", "color"], ["crop", "color"], row_name="first",
                            col_name="second", title="pairs: linear-eval top-1")
    save_png(figure, "study.png")
"""

from __future__ import annotations

import math
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

DPI = 100
MAX_EMBEDDING_POINTS = 2000  # t-SNE is quadratic-ish and the picture unreadable past a few thousand


def new_figure(width: float, height: float) -> Figure:
    """A figure of `width` x `height` inches on its own Agg canvas, with constrained layout."""
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Figure, path: str) -> str:
    """Writes `figure` as a PNG at `path` (through a temporary file, so a reader never sees half)."""
    tmp = f"{path}.tmp-{os.getpid()}.png"
    figure.savefig(tmp, format="png", dpi=DPI)
    os.replace(tmp, path)
    return path


def _range(values) -> tuple[float, float]:
    """(low, high) of the finite values; a flat or empty range is widened so a colour map works."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if high <= low:
        low, high = low - 0.005, high + 0.005
    return low, high


def heatmap_figure(values, row_labels: list[str], col_labels: list[str], *, row_name: str,
                   col_name: str, title: str) -> Figure:
    """A heat map of accuracies, each cell's value written in it, with a colour bar.

    Args:
        values: array-like `(rows, cols)` of fractions in [0, 1]; NaN for a missing cell (drawn
            grey, written `-`).
        row_labels: list of str. One per row, the y tick labels.
        col_labels: list of str. One per column, the x tick labels (on top, like a table).
        row_name: str. The y axis label.
        col_name: str. The x axis label.
        title: str. The axes' title.

    Returns:
        The figure; its colour bar spans the finite values' minimum to maximum.
    """
    values = np.asarray(values, np.float64)
    rows, cols = values.shape
    longest = max(len(label) for label in row_labels)
    figure = new_figure(2.6 + 0.07 * longest + 0.85 * cols, 1.6 + 0.42 * rows)
    axes = figure.add_subplot()
    low, high = _range(values.ravel().tolist())
    masked = np.ma.masked_invalid(values)
    cmap = _colormap("Blues").with_extremes(bad="#dddddd")
    image = axes.imshow(masked, cmap=cmap, vmin=low, vmax=high, aspect="auto")
    axes.set_xticks(range(cols), col_labels)
    axes.set_yticks(range(rows), row_labels)
    axes.xaxis.tick_top()
    axes.xaxis.set_label_position("top")
    axes.tick_params(axis="x", labelrotation=30 if max(map(len, col_labels)) > 8 else 0)
    axes.set_xlabel(col_name)
    axes.set_ylabel(row_name)
    axes.set_title(title, fontsize="medium")
    for i in range(rows):
        for j in range(cols):
            value = values[i, j]
            dark = math.isfinite(value) and (value - low) / (high - low) > 0.6
            axes.text(j, i, "-" if not math.isfinite(value) else f"{value:.1%}", ha="center",
                      va="center", fontsize="small", color="white" if dark else "black")
    bar = figure.colorbar(image, ax=axes, format=PercentFormatter(xmax=1.0, decimals=1))
    bar.set_label("linear-eval top-1")
    return figure


def bar_figure(labels: list[str], values: list, *, name: str, title: str) -> Figure:
    """Horizontal bars of accuracies, one per label, each with its value; `None` for a missing one."""
    figure = new_figure(6.4, 1.2 + 0.35 * len(labels))
    axes = figure.add_subplot()
    positions = np.arange(len(labels))
    heights = [0.0 if v is None else v for v in values]
    low, high = _range(values)
    colours = _colormap("Blues")([0.3 + 0.6 * (h - low) / (high - low) for h in heights])
    axes.barh(positions, heights, color=colours, edgecolor="black", linewidth=0.5)
    for position, value in zip(positions, values, strict=True):
        axes.text(0.01 if value is None else value + 0.01, position,
                  "-" if value is None else f"{value:.1%}", va="center", fontsize="small")
    axes.set_yticks(positions, labels)
    axes.invert_yaxis()  # the first value on top, as in the table
    axes.set_xlim(0.0, 1.12)
    axes.xaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    axes.set_xlabel("linear-eval top-1")
    axes.set_ylabel(name)
    axes.set_title(title, fontsize="medium")
    return figure


def line_figure(x_values: list, lines: dict[str, list], *, x_name: str, title: str) -> Figure:
    """Accuracy against `x_values`, one line per entry of `lines` (label -> one value per x).

    A `None` value is left out (the line joins its neighbours). The x axis is logarithmic when the
    values are positive and span a factor of 10 or more (temperatures 0.05 .. 1, batch sizes
    32 .. 4096), else linear; each x value has a tick. A legend names the lines when there is more
    than one, or when the one line has a label.
    """
    legend = len(lines) > 1 or any(lines)
    longest = max((len(label) for label in lines), default=0)
    figure = new_figure(6.4 + (0.4 + 0.07 * longest if legend else 0.0), 3.8)
    axes = figure.add_subplot()
    log_x = min(x_values) > 0 and max(x_values) / min(x_values) >= 10
    if log_x:
        axes.set_xscale("log")
    for label, ys in lines.items():
        points = [(x, y) for x, y in zip(x_values, ys, strict=True) if y is not None]
        if points:
            xs, values = zip(*points, strict=True)
            axes.plot(xs, values, marker="o", linewidth=2, label=label or None)
    axes.set_xticks(x_values, [f"{v:g}" for v in x_values])
    axes.minorticks_off()
    axes.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=1))
    axes.grid(True, color="#e6e6e6")
    axes.set_xlabel(x_name + (" (log scale)" if log_x else ""))
    axes.set_ylabel("linear-eval top-1")
    axes.set_title(title, fontsize="medium")
    if legend:
        axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", frameon=False)
    return figure


def principal_components(features: np.ndarray, dims: int = 2) -> np.ndarray:
    """`features` `(N, D)` projected on their first `dims` principal components, `(N, dims)`.

    Fewer than `dims` components exist when N or D is below `dims`: the missing ones are zeros.
    """
    centred = np.asarray(features, np.float64) - np.mean(features, axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    projected = centred @ vt[:dims].T
    return np.pad(projected, [(0, 0), (0, dims - projected.shape[1])])


def tsne(features: np.ndarray, *, seed: int = 0) -> np.ndarray | None:
    """A 2-D t-SNE of `features` `(N, D)`, `(N, 2)`; None without scikit-learn or under 5 points.

    The features are first reduced to their 50 principal components (the usual speed-up; t-SNE
    keeps only neighbourhoods), the perplexity is at most a third of the points, and 500
    iterations (half the default) settle a picture of a few thousand points.

    References:
        van der Maaten and Hinton, Visualizing Data using t-SNE, JMLR 2008.
    """
    try:
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    count = len(features)
    if count < 5:
        return None
    reduced = principal_components(features, dims=min(50, *np.shape(features)))
    model = TSNE(n_components=2, perplexity=min(30.0, (count - 1) / 3), init="pca",
                 learning_rate="auto", max_iter=500, random_state=seed)
    # One thread: on shared or busy cores OpenMP's spinning threads made it 4x slower (2,000
    # points: 3.7 s of CPU against 14 s), and the result does not depend on the threads' order.
    with threadpool_limits(limits=1):
        return model.fit_transform(reduced.astype(np.float32))


def _colormap(name: str):
    import matplotlib

    return matplotlib.colormaps[name]


def class_colours(classes: list[int]) -> dict[int, tuple]:
    """One colour per class: tab10 up to 10 classes, tab20 up to 20, an even spread of turbo beyond."""
    if len(classes) <= 10:
        palette = _colormap("tab10").colors
    elif len(classes) <= 20:
        palette = _colormap("tab20").colors
    else:
        palette = [_colormap("turbo")(t) for t in np.linspace(0.05, 0.95, len(classes))]
    return {label: palette[i] for i, label in enumerate(classes)}


def embedding_figure(features: np.ndarray, labels: np.ndarray, *, title: str = "", with_tsne: bool = True,
                     max_points: int = MAX_EMBEDDING_POINTS, seed: int = 0) -> Figure:
    """The embeddings in 2-D, one colour per class: PCA, and t-SNE beside it when available.

    Args:
        features: array `(N, D)`. The encoder's features.
        labels: array `(N,)` of ints; negative for an unlabelled image (drawn grey).
        title: str. The figure's title.
        with_tsne: bool. Add the t-SNE panel (when scikit-learn is importable and N >= 5).
        max_points: int. At most this many points are drawn (a fixed random subset, the same in
            both panels); the principal components are those of all the features.
        seed: int. Chooses the subset and seeds t-SNE.

    Returns:
        The figure: one axes per panel, and a figure legend with one entry per class.
    """
    features = np.asarray(features)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    pca = principal_components(features)
    keep = np.arange(len(labels))
    if len(keep) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(keep), max_points, replace=False))
    panels = [(f"PCA (first two components, {len(keep)} points)", pca[keep])]
    if with_tsne:
        embedded = tsne(features[keep], seed=seed)
        if embedded is not None:
            panels.append((f"t-SNE ({len(keep)} points)", embedded))
    classes = sorted({int(label) for label in labels[keep] if label >= 0})
    colours = class_colours(classes)
    legend_columns = max(1, math.ceil((len(classes) + 1) / 20))
    figure = new_figure(4.2 * len(panels) + 0.8 + 0.55 * legend_columns, 4.6)
    subplots = figure.subplots(1, len(panels), squeeze=False)[0]
    shown = labels[keep]
    for axes, (name, points) in zip(subplots, panels, strict=True):
        for label in classes:
            mask = shown == label
            axes.scatter(points[mask, 0], points[mask, 1], s=7, color=colours[label], linewidths=0,
                         label=str(label))
        if (shown < 0).any():
            axes.scatter(points[shown < 0, 0], points[shown < 0, 1], s=7, color="#999999", linewidths=0,
                         label="unlabelled")
        axes.set_title(name, fontsize="medium")
        axes.set_xticks([])
        axes.set_yticks([])
        axes.set_aspect("equal", adjustable="datalim")
    handles, names = subplots[0].get_legend_handles_labels()
    figure.legend(handles, names, loc="outside right upper", title="class", fontsize="small",
                  markerscale=2, frameon=False, ncols=legend_columns)
    if title:
        figure.suptitle(title, fontsize="medium")
    return figure
