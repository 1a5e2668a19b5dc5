"""Which labelled examples a phase uses: class-balanced label fractions and held-out parts.

Pure functions of the labels and a seed (NumPy only), so every phase and every resumed run picks
the same examples.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

log = logging.getLogger("simclr_tf.data.sources")


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def label_subset(
    labels: Sequence[int] | np.ndarray, *, fraction: float | None = None, per_class: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Indices of a class-balanced labelled subset (SimCLR's 1% / 10% label fractions).

    Each class contributes `round(fraction * class_count)` examples (at least 1; halves round up), or
    `per_class` examples (all of a class that has fewer, with a warning). Which examples is drawn per
    class from `(seed, class)`, so the subset is a pure function of the labels and the seed.

    Args:
        labels: int array `(num_examples,)`, values >= 0.
        fraction: float in (0, 1]. Fraction of each class to keep.
        per_class: int > 0. Number of examples to keep per class.
        seed: int. Selection seed.

    Returns:
        Sorted int64 indices into `labels`.

    Raises:
        ValueError: not exactly one of `fraction` / `per_class`, a value out of range, or unlabelled
            examples (label < 0).

    Example:
    >>> label_subset([0, 0, 0, 0, 1, 1, 1, 1], per_class=1, seed=0).shape
    (2,)
    """
    if (fraction is None) == (per_class is None):
        raise ValueError(
            "Pass exactly one of `fraction` (e.g. 0.1) or `per_class` (e.g. 10) to `label_subset`. "
            f"Received: fraction={fraction!r}, per_class={per_class!r}."
        )
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise ValueError(f"`fraction` must be in (0, 1]. Received: {fraction!r}.")
    if per_class is not None and (int(per_class) != per_class or per_class <= 0):
        raise ValueError(f"`per_class` must be a positive integer. Received: {per_class!r}.")
    labels = np.asarray(labels)
    if labels.size and labels.min() < 0:
        raise ValueError(
            "`label_subset` needs labelled examples, but some labels are negative (-1 means unlabelled). "
            "Use a labelled data set (class sub-folders for image folders)."
        )
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if fraction is not None:
            count = max(1, _round_half_up(fraction * len(members)))
        else:
            count = int(per_class)
            if count > len(members):
                log.warning("Class %d has only %d examples, fewer than per_class=%d: using all of them.",
                            cls, len(members), count)
                count = len(members)
        rng = np.random.default_rng([seed & 0xFFFFFFFF, int(cls)])
        chosen.append(rng.choice(members, size=count, replace=False))
    if not chosen:
        return np.zeros(0, np.int64)
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def held_out_split(labels: Sequence[int] | np.ndarray, *, fraction: float, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A seeded, stratified held-out part of the labelled examples: `(rest, held_out)` indices.

    Each class with at least two examples gives `round(fraction * count)` of them (at least 1, and
    always leaves one) to the held-out part; a class of one example stays in the rest, as do the
    unlabelled examples (label -1). Which examples is drawn per class from `(seed, class)`.

    Args:
        labels: int array `(num_examples,)`; -1 marks unlabelled examples.
        fraction: float in (0, 1). Fraction of each class held out.
        seed: int. Selection seed.

    Returns:
        `(rest, held_out)`: sorted int64 index arrays that partition `range(len(labels))`.

    Example:
    >>> rest, held_out = held_out_split([0] * 10 + [1] * 10 + [-1] * 3, fraction=0.1)
    >>> len(rest), len(held_out)
    (21, 2)
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"`fraction` must be in (0, 1), e.g. 0.1. Received: {fraction!r}.")
    labels = np.asarray(labels).reshape(-1)
    held = []
    for cls in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == cls)
        if len(members) < 2:
            continue
        count = min(len(members) - 1, max(1, _round_half_up(fraction * len(members))))
        rng = np.random.default_rng([seed & 0xFFFFFFFF, int(cls), 0xE7A1])
        held.append(rng.choice(members, size=count, replace=False))
    held_out = np.sort(np.concatenate(held)).astype(np.int64) if held else np.zeros(0, np.int64)
    rest = np.setdiff1d(np.arange(len(labels), dtype=np.int64), held_out)
    return rest, held_out
