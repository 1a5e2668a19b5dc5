"""Preview SimCLR's augmentations: write a PNG grid of view pairs of one image.

The grid has the original image (evaluation preprocessing: centre crop and resize) in the left
column, then one row per pair with `view_1` and `view_2` side by side, on a gray background with a
small margin.

Usage:

    python -m simclr_tf.preview --image photo.jpg --out grid.png
    python -m simclr_tf.preview --digits --out grid.png --pairs 6
    python -m simclr_tf.preview --image photo.jpg --out grid.png --image_size 96 \\
        --color_jitter_strength 0.5 --no_use_blur --seed 3
    python -m simclr_tf.preview --digits --out grid.png --view_a crop --view_b crop,rotate

`--policy` sets the policy of both views, `--view_a` / `--view_b` of one (`simclr_tf.data.policy`):
a named policy (`default`: SimCLR's view, `identity`) or transformations in order, e.g.
`crop,cutout,noise(std=0.05)`. The resolved policies are printed.

`--color_jitter_strength` and `--use_blur` default to the papers' choice for the image size:
strength 1.0 with blur above 32 px (ImageNet), 0.5 without blur at 32 px and below (CIFAR).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from simclr_tf.config import COLOR_JITTER_IMPLS, SMALL_IMAGE_SIZE, AugmentConfig

MARGIN = 6  # pixels between and around the tiles
BACKGROUND = 128  # gray, so that black and white views both stand out


def digits_image(index: int = 0) -> np.ndarray:
    """One scikit-learn digits scan as a 32 x 32 RGB uint8 image.

    The 8 x 8 scans hold values 0-16; each value is scaled to 0-255 and repeated over a 4 x 4
    block, so the pixels stay sharp.

    Args:
        index: int. Which of the 1,797 scans.

    Returns:
        uint8 array of shape `(32, 32, 3)`.

    Raises:
        ValueError: if `index` is out of range.
    """
    from sklearn.datasets import load_digits

    images = load_digits().images  # (1797, 8, 8), values 0-16
    if not 0 <= index < len(images):
        raise ValueError(f"`digit_index` must be in [0, {len(images) - 1}]. Received: {index}.")
    gray = np.round(images[index] * (255.0 / 16.0)).astype(np.uint8)  # (8, 8)
    gray = np.kron(gray, np.ones((4, 4), np.uint8))  # (32, 32)
    return np.repeat(gray[:, :, None], 3, axis=2)


def load_image(path: str) -> np.ndarray:
    """Decodes an image file with Pillow as RGB uint8 `(height, width, 3)`.

    Raises:
        FileNotFoundError: if `path` does not exist.
        OSError: if Pillow cannot read it as an image.
    """
    from PIL import Image

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such image file: {path!r}")
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def make_grid(
    original: np.ndarray, pairs: list[tuple[np.ndarray, np.ndarray]], margin: int = MARGIN
) -> np.ndarray:
    """Lays out the original (left column, vertically centred) and one row per view pair.

    Args:
        original: float array `(S, S, 3)` in `[0, 1]`.
        pairs: list of `(view_1, view_2)`, float arrays `(S, S, 3)` in `[0, 1]`.
        margin: int. Pixels between and around the tiles.

    Returns:
        uint8 array of shape `(rows * (S + margin) + margin, 3 * (S + margin) + margin, 3)` with
        `rows = len(pairs)`.
    """
    side = original.shape[0]
    step = side + margin
    rows = len(pairs)
    grid = np.full((rows * step + margin, 3 * step + margin, 3), BACKGROUND, np.uint8)

    def put(tile, top, left):
        grid[top : top + side, left : left + side] = np.round(np.clip(tile, 0.0, 1.0) * 255.0)

    put(original, margin + (rows - 1) * step // 2, margin)
    for row, (view_1, view_2) in enumerate(pairs):
        put(view_1, margin + row * step, margin + step)
        put(view_2, margin + row * step, margin + 2 * step)
    return grid


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simclr_tf.preview",
        description="Write a PNG grid of SimCLR view pairs of one image.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="path of an image file (anything Pillow reads)")
    source.add_argument("--digits", action="store_true", help="use a scikit-learn digits scan (32 x 32)")
    parser.add_argument("--digit_index", type=int, default=0, help="which digits scan (default 0)")
    parser.add_argument("--out", required=True, help="path of the PNG to write")
    parser.add_argument("--pairs", type=int, default=4, help="number of view pairs (rows), default 4")
    parser.add_argument(
        "--image_size", type=int, default=None, help="side of the views; default 224, or 32 with --digits"
    )
    parser.add_argument("--seed", type=int, default=0, help="augmentation seed (default 0)")
    parser.add_argument(
        "--color_jitter_strength", type=float, default=None,
        help=f"colour jitter strength s; default 1.0, or 0.5 at <= {SMALL_IMAGE_SIZE} px",
    )
    parser.add_argument("--color_jitter_impl", choices=COLOR_JITTER_IMPLS,
                        default=AugmentConfig().color_jitter_impl)
    parser.add_argument(
        "--use_blur", dest="use_blur", action="store_true", default=None,
        help=f"blur with p = 0.5 (default above {SMALL_IMAGE_SIZE} px)",
    )
    parser.add_argument("--no_use_blur", dest="use_blur", action="store_false", help="never blur")
    parser.add_argument("--crop_min_area", type=float, default=0.08, help="smallest crop area fraction")
    parser.add_argument("--policy", default="default",
                        help="policy of both views: default, identity, or e.g. crop,rotate")
    parser.add_argument("--view_a", default=None, help="policy of the first view (default: --policy)")
    parser.add_argument("--view_b", default=None, help="policy of the second view (default: --policy)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the preview; returns 0. Bad arguments or an unreadable image exit with code 2."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.pairs < 1:
        parser.error(f"--pairs must be at least 1. Received: {args.pairs}.")
    try:
        image = digits_image(args.digit_index) if args.digits else load_image(args.image)
    except (OSError, ValueError) as error:  # missing file, not an image, bad digit index
        parser.error(f"cannot read the image: {error}")
    image_size = args.image_size or (SMALL_IMAGE_SIZE if args.digits else 224)
    augment = AugmentConfig(
        color_jitter_strength=args.color_jitter_strength,
        use_blur=args.use_blur,
        color_jitter_impl=args.color_jitter_impl,
        crop_min_area=args.crop_min_area,
        view_a=args.view_a or args.policy,
        view_b=args.view_b or args.policy,
    ).for_image_size(image_size)  # the papers' strength and blur for this size where not given
    strength, use_blur = augment.color_jitter_strength, augment.use_blur

    import tensorflow as tf  # after the argument checks: a typo should not wait for TensorFlow

    from simclr_tf.data import policy, views

    try:
        described = [policy.describe_policy(policy.resolve_policy(spec, augment, flag))
                     for flag, spec in (("view_a", augment.view_a), ("view_b", augment.view_b))]
        original = views.eval_preprocess(image, image_size=image_size).numpy()
        pairs = []
        for row in range(args.pairs):
            view_1, view_2 = views.two_views(
                image, tf.constant([args.seed, row], tf.int64), image_size=image_size, augment=augment
            )
            pairs.append((view_1.numpy(), view_2.numpy()))
    except ValueError as error:  # an invalid size, strength or area, with the reason
        parser.error(str(error))

    from PIL import Image

    grid = make_grid(original, pairs)
    directory = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(directory, exist_ok=True)
    Image.fromarray(grid).save(args.out, format="PNG")
    source = "digits" if args.digits else args.image
    print(
        f"Wrote {args.out} ({grid.shape[1]} x {grid.shape[0]} px): {source}, {args.pairs} pairs at "
        f"{image_size} px, strength {strength}, blur {'on' if use_blur else 'off'}, seed {args.seed}.\n"
        f"  view_a: {described[0]}\n  view_b: {described[1]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
