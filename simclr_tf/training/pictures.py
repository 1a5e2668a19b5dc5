"""A picture of what was learned: the held-out embeddings, in TensorBoard's projector and as a PNG.

`embeddings.png` in the run's directory shows the encoder's features of the held-out images in
2-D, one colour per class with a legend: their first two principal components and, beside them, a
t-SNE of the same points (scikit-learn; at most 2,000 points, a fixed subset and seed), for those
who do not open TensorBoard; `logs/projector/` holds the same features for TensorBoard's projector.
The figure is `simclr_tf.plots.embedding_figure`.
"""

from __future__ import annotations

import os

import numpy as np


def embedding_png(features: np.ndarray, labels: np.ndarray, path: str, *, title: str = "",
                  with_tsne: bool = True) -> str:
    """Writes the embeddings' picture (PCA, and t-SNE beside it) of `features` by `labels` to `path`.

    Args:
        features: array `(N, D)`. The encoder's features of the held-out images.
        labels: array `(N,)`. Their classes; negative for unlabelled images.
        path: str. The PNG to write (atomically).
        title: str. The picture's title.
        with_tsne: bool. Add the t-SNE panel (a few seconds for 2,000 points). Defaults to `True`.

    Returns:
        `path`.
    """
    from simclr_tf import plots  # matplotlib is loaded only when a picture is drawn

    return plots.save_png(plots.embedding_figure(features, labels, title=title, with_tsne=with_tsne), path)


def write_projector(log_dir: str, features: np.ndarray, labels: np.ndarray) -> str:
    """The features as an embedding for TensorBoard's projector, with labels as metadata."""
    import tensorflow as tf
    from tensorboard.plugins import projector

    directory = os.path.join(log_dir, "projector")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "metadata.tsv"), "w", encoding="utf-8") as f:
        f.writelines(f"{int(label)}\n" for label in np.asarray(labels).reshape(-1))
    embedding = tf.Variable(np.asarray(features, np.float32), name="embedding")
    tf.train.Checkpoint(embedding=embedding).save(os.path.join(directory, "embedding.ckpt"))
    config = projector.ProjectorConfig()
    entry = config.embeddings.add()
    entry.tensor_name = "embedding/.ATTRIBUTES/VARIABLE_VALUE"
    entry.metadata_path = "metadata.tsv"
    projector.visualize_embeddings(directory, config)
    return directory
