"""A picture of what was learned: the held-out embeddings, in TensorBoard's projector and as a PNG.

`embeddings.png` in the run's directory is a 2-D projection (the first two principal components)
of the encoder's features of the held-out images, one colour per class, for those who do not
open TensorBoard; `logs/projector/` holds the same features for TensorBoard's projector.
"""

from __future__ import annotations

import os

import numpy as np

# Twelve distinguishable colours (repeated for more classes).
_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
            (0, 0, 128), (128, 128, 0)]


def principal_components(features: np.ndarray, dims: int = 2) -> np.ndarray:
    """`features` `(N, D)` projected on their first `dims` principal components, `(N, dims)`."""
    centred = np.asarray(features, np.float64) - np.mean(features, axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:dims].T


def embedding_png(features: np.ndarray, labels: np.ndarray, path: str, *, title: str = "",
                  size: int = 480) -> str:
    """Draws the 2-D principal-component projection of `features`, coloured by `labels`."""
    from PIL import Image, ImageDraw

    points = principal_components(features)
    margin = 24
    low, high = points.min(axis=0), points.max(axis=0)
    scale = (size - 2 * margin) / np.maximum(high - low, 1e-12)
    pixels = margin + (points - low) * scale
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for (x, y), label in zip(pixels, np.asarray(labels).reshape(-1), strict=True):
        colour = _PALETTE[int(label) % len(_PALETTE)] if label >= 0 else (0, 0, 0)
        y = size - y  # first component to the right, second up
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    if title:
        draw.text((margin, 4), title, fill=(0, 0, 0))
    classes = sorted({int(label) for label in np.asarray(labels).reshape(-1) if label >= 0})
    for row, label in enumerate(classes[:24]):  # a legend: one swatch per class, top right
        y = margin + 12 * row
        draw.rectangle([size - 44, y, size - 36, y + 8], fill=_PALETTE[label % len(_PALETTE)])
        draw.text((size - 32, y - 2), str(label), fill=(0, 0, 0))
    tmp = f"{path}.tmp-{os.getpid()}.png"
    image.save(tmp)
    os.replace(tmp, path)
    return path


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
