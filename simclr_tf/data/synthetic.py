"""Synthetic coloured shapes, one shape per class, drawn from a seed (pure NumPy).

The class lives in the shape only (random position, size, colours and noise), so the classes survive
SimCLR's colour distortion and are learnable from a few hundred images. `sources.load_synthetic`
turns the images into a `Source`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SYNTHETIC_NUM_CLASSES = 10


def _shape_masks(shape_ids: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Foreground masks of the ten class shapes; dx, dy are pixel offsets from the centre / radius."""
    dist = np.sqrt(dx**2 + dy**2)
    box = np.maximum(np.abs(dx), np.abs(dy))
    shapes = [
        dist <= 1.0,  # 0 disk
        box <= 0.8,  # 1 square
        (np.abs(dy) <= 0.8) & (np.abs(dx) <= (dy + 0.8) * 0.6),  # 2 triangle, apex up
        (dist >= 0.55) & (dist <= 1.0),  # 3 ring
        ((np.abs(dx) <= 0.25) | (np.abs(dy) <= 0.25)) & (box <= 1.0),  # 4 plus
        ((np.abs(dx - dy) <= 0.3) | (np.abs(dx + dy) <= 0.3)) & (box <= 0.85),  # 5 X
        np.abs(dx) + np.abs(dy) <= 1.0,  # 6 diamond
        (box >= 0.5) & (box <= 0.85),  # 7 hollow square
        (box <= 0.9) & (np.floor((dy + 1.0) * 2.5) % 2 == 0),  # 8 stripes
        (dist <= 1.0) & ((dx - 0.45) ** 2 + dy**2 > 0.36),  # 9 crescent
    ]
    masks = np.zeros(dx.shape, bool)
    for k, mask in enumerate(shapes):
        masks |= mask & (shape_ids == k)[:, None, None]
    return masks


def make_synthetic_images(
    num_examples: int, image_size: int, seed: int | Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Draws coloured shapes, one shape per class, on plain noisy backgrounds.

    The class lives in the shape only (random position, size, colours and noise), so the classes
    survive SimCLR's colour distortion and are learnable from a few hundred images.

    Args:
        num_examples: int. Number of images; labels are balanced (`i % 10`, then shuffled).
        image_size: int. Side of the square images.
        seed: int or sequence of ints (NumPy `SeedSequence` entropy). The images are a pure function
            of `(num_examples, image_size, seed)`.

    Returns:
        `(images, labels)`: uint8 `(num_examples, image_size, image_size, 3)`, int32 `(num_examples,)`.
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(num_examples) % SYNTHETIC_NUM_CLASSES).astype(np.int32)
    radius = rng.uniform(0.22, 0.4, num_examples) * image_size
    centre = rng.uniform(0.0, 1.0, (num_examples, 2)) * (image_size - 2 * radius[:, None]) + radius[:, None]
    background = rng.uniform(0.0, 1.0, (num_examples, 3))
    # Foreground: a random colour pushed away from the background so the shape stays visible.
    foreground = rng.uniform(0.0, 1.0, (num_examples, 3))
    too_close = np.abs(foreground - background).max(axis=1) < 0.35
    foreground[too_close] = 1.0 - background[too_close]
    noise_seed = rng.integers(0, 2**31)

    images = np.empty((num_examples, image_size, image_size, 3), np.uint8)
    grid = np.arange(image_size, dtype=np.float32) + 0.5
    noise_rng = np.random.default_rng(noise_seed)
    for start in range(0, num_examples, 256):  # chunks bound the memory of large images
        stop = min(start + 256, num_examples)
        r = radius[start:stop, None, None]
        dx = (grid[None, None, :] - centre[start:stop, 0, None, None]) / r  # (n, 1, S)
        dy = (grid[None, :, None] - centre[start:stop, 1, None, None]) / r  # (n, S, 1)
        dx, dy = np.broadcast_arrays(dx, dy)  # (n, S, S)
        mask = _shape_masks(labels[start:stop], dx, dy)[..., None]  # (n, S, S, 1)
        colour = np.where(mask, foreground[start:stop, None, None], background[start:stop, None, None])
        colour = colour + noise_rng.normal(0.0, 0.03, colour.shape)
        images[start:stop] = np.clip(np.round(colour * 255.0), 0, 255).astype(np.uint8)
    return images, labels

