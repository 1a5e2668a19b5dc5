"""simclr_tf.plots and the embeddings picture (simclr_tf.training.pictures): the figures' panels,
legends and points against references computed another way, and the PNGs they write."""

import os
import sys

import numpy as np
import pytest
from PIL import Image

from simclr_tf import plots
from simclr_tf.training import pictures


def _clusters(count_per_class=40, classes=4, dims=16, seed=0):
    """Well-separated Gaussian clusters: class c centred at 10 * e_c."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), count_per_class)
    features = rng.normal(size=(len(labels), dims)) + 10.0 * np.eye(dims)[labels]
    return features, labels


def _panel_points(axes):
    """Every point drawn in `axes`, by legend label: label -> (n, 2)."""
    return {c.get_label(): np.asarray(c.get_offsets()) for c in axes.collections}


def test_embedding_figure_has_pca_and_tsne_panels_and_a_legend_of_every_class():
    features, labels = _clusters()
    figure = plots.embedding_figure(features, labels, title="held-out")
    panels = figure.axes
    assert [a.get_title() for a in panels] == ["PCA (first two components, 160 points)", "t-SNE (160 points)"]
    (legend,) = figure.legends
    assert [t.get_text() for t in legend.get_texts()] == ["0", "1", "2", "3"]
    assert figure.get_suptitle() == "held-out"
    # The PCA panel: the projection on the covariance's two leading eigenvectors (up to sign).
    centred = features - features.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(centred, rowvar=False))
    reference = centred @ eigenvectors[:, np.argsort(eigenvalues)[::-1][:2]]
    drawn = _panel_points(panels[0])
    for label in range(4):
        got, want = drawn[str(label)], reference[labels == label]
        signs = np.sign(np.sum(got * want, axis=0))
        np.testing.assert_allclose(got * signs, want, rtol=1e-6, atol=1e-6)
    # The t-SNE panel keeps neighbourhoods: each point's nearest neighbour is of its own class.
    tsne = _panel_points(panels[1])
    points = np.concatenate([tsne[str(c)] for c in range(4)])
    classes = np.repeat(np.arange(4), 40)
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1) + np.eye(len(points)) * 1e9
    assert np.mean(classes[np.argmin(distances, axis=1)] == classes) > 0.95


def test_tsne_is_repeatable_and_guarded():
    features, _ = _clusters(count_per_class=10)
    np.testing.assert_array_equal(plots.tsne(features, seed=3), plots.tsne(features, seed=3))
    assert plots.tsne(features[:4]) is None  # too few points for any perplexity


def test_without_scikit_learn_the_picture_is_pca_alone(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)  # `import` raises ImportError
    features, labels = _clusters(count_per_class=10)
    assert plots.tsne(features) is None
    figure = plots.embedding_figure(features, labels)
    assert len(figure.axes) == 1 and figure.axes[0].get_title().startswith("PCA")
    assert len(plots.embedding_figure(features, labels, with_tsne=False).axes) == 1


def test_many_points_are_subsampled_the_same_way_in_both_panels():
    features, labels = _clusters(count_per_class=30, classes=3)
    labels = labels.copy()
    labels[::9] = -1  # some unlabelled images: grey, named in the legend
    figure = plots.embedding_figure(features, labels, max_points=50, seed=1)
    first, second = (_panel_points(a) for a in figure.axes)
    assert sum(len(p) for p in first.values()) == sum(len(p) for p in second.values()) == 50
    assert {k: len(v) for k, v in first.items()} == {k: len(v) for k, v in second.items()}
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["0", "1", "2", "unlabelled"]
    assert "50 points" in figure.axes[0].get_title()


def test_one_image_or_one_feature_still_draws():
    """Fewer principal components than two exist: the missing one is zero, and t-SNE is left out."""
    np.testing.assert_array_equal(plots.principal_components(np.ones((1, 8))), [[0.0, 0.0]])
    column = plots.principal_components(np.array([[1.0], [3.0]]))
    np.testing.assert_allclose(np.abs(column), [[1.0, 0.0], [1.0, 0.0]])
    figure = plots.embedding_figure(np.ones((1, 8)), [2])
    assert len(figure.axes) == 1 and [t.get_text() for t in figure.legends[0].get_texts()] == ["2"]


def test_class_colours_are_distinct():
    for count in (3, 10, 15, 40):
        colours = plots.class_colours(list(range(count)))
        assert len({tuple(np.round(c, 6)) for c in colours.values()}) == count


def test_embedding_png_is_a_small_picture_of_the_figure(tmp_path):
    features, labels = _clusters(count_per_class=50, classes=10, dims=32)
    path = pictures.embedding_png(features, labels, str(tmp_path / "embeddings.png"), title="t")
    assert path == str(tmp_path / "embeddings.png") and os.listdir(tmp_path) == ["embeddings.png"]
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("RGB"))
    width, height = plots.embedding_figure(features, labels, title="t").get_size_inches() * plots.DPI
    assert pixels.shape == (round(height), round(width), 3)
    assert pixels.shape[1] > 2 * pixels.shape[0] * 0.9  # two square-ish panels side by side
    colours = plots.class_colours(list(range(10))).values()
    tab10 = [np.round(np.array(c) * 255).astype(np.uint8) for c in colours]
    present = {tuple(p) for p in pixels.reshape(-1, 3)}
    assert all(tuple(c) in present for c in tab10)  # every class's colour is drawn (points, legend)
    assert os.path.getsize(path) < 300_000


def test_save_png_of_each_study_figure_decodes_with_its_size(tmp_path):
    figures = {
        "heat": plots.heatmap_figure([[0.5, np.nan], [0.7, 0.9]], ["a", "b"], ["x", "y"], row_name="r",
                                     col_name="c", title="t"),
        "bars": plots.bar_figure(["a", "b"], [0.4, 0.8], name="n", title="t"),
        "lines": plots.line_figure([1, 2, 4], {"": [0.5, 0.6, 0.7]}, x_name="x", title="t"),
    }
    for name, figure in figures.items():
        path = plots.save_png(figure, str(tmp_path / f"{name}.png"))
        with Image.open(path) as image:
            assert image.size == tuple(round(v) for v in figure.get_size_inches() * plots.DPI)
            assert len(image.convert("RGB").getcolors(1 << 20)) > 20
        assert os.path.getsize(path) < 300_000
    assert sorted(os.listdir(tmp_path)) == ["bars.png", "heat.png", "lines.png"]  # no temporary left


def test_a_flat_heat_map_still_has_a_colour_range():
    """All cells equal (or none finite): the colour bar is widened, not empty."""
    figure = plots.heatmap_figure([[0.8, 0.8]], ["a"], ["x", "y"], row_name="r", col_name="c", title="t")
    norm = figure.axes[0].images[0].norm
    assert norm.vmin == pytest.approx(0.795) and norm.vmax == pytest.approx(0.805)
    figure = plots.heatmap_figure([[np.nan]], ["a"], ["x"], row_name="r", col_name="c", title="t")
    assert figure.axes[0].texts[0].get_text() == "-"
