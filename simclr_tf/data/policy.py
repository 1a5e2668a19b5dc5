"""View policies: a view as an ordered list of named transformations with their parameters.

A policy is written as text, one flag per branch (`--view_a` for the first view, `view_1`, and
`--view_b` for the second, `view_2`): transformation names separated by commas, each optionally with
parameters in parentheses, applied left to right:

    crop,flip,color(strength=0.5),blur(p=0.5)        SimCLR's view, spelled out
    crop,rotate                                      crop, then a rotation by 90, 180 or 270 degrees
    crop,cutout(low=0.2,high=0.4),noise(std=0.05)

or a named policy of `simclr_tf.config.VIEW_POLICIES`: `default` is SimCLR's view as the other
`AugmentConfig` fields set it (crop of `crop_min_area`, flip if `random_flip`, colour distortion of
`color_jitter_strength`, blur if `use_blur`), exactly today's pipeline: the same random stream and
pixels. `identity` (or an empty policy) only resizes the image to the view size.

The transformations and their parameters (a missing parameter takes the default shown; `None`
means the `AugmentConfig` field):

    crop(area=crop_min_area)               Inception crop of at least `area` of the image, resized
    flip(p=0.5)                            horizontal flip
    color(strength=..., p=0.8, drop_p=0.2) colour jitter with p, then colour drop with drop_p
    jitter(strength=..., p=0.8)            colour jitter alone
    drop(p=0.2)                            colour drop (grayscale) alone
    blur(p=0.5)                            Gaussian blur, sigma in [0.1, 2], kernel 10% of the side
    cutout(p=1, low=0.1, high=0.5)         a black square, side a fraction in [low, high]
    sobel(p=1)                             Sobel gradient magnitude
    noise(std=0.1, p=1)                    additive Gaussian noise
    rotate(p=1)                            rotation by 90, 180 or 270 degrees

A policy that does not start with `crop` first resizes the whole image to the view size (so
`rotate,crop` rotates the resized image, then crops it). Seeds: each view's seed is split in four
for crop, flip, colour (`color`, `jitter` and `drop` share it, so `jitter,drop` equals `color`)
and blur, as SimCLR's view always did; a transformation used a second time, and the new ones, draw
from `stateless_fold_in(view_seed, position)`. Runs of flip, colour and blur in that order run in
one fused, XLA-compiled kernel call (`simclr_tf.data.kernel`).
"""

from __future__ import annotations

import re

import tensorflow as tf

from simclr_tf.config import VIEW_POLICIES, VIEW_TRANSFORMS, AugmentConfig
from simclr_tf.data.color import check_strength, sample_color
from simclr_tf.data.kernel import apply_view_ops, check_image, split_seed
from simclr_tf.data.ops import blur_kernel_size, random_resized_crop, resize_bicubic, sample_blur
from simclr_tf.data.transforms import random_cutout, random_gaussian_noise, random_rotate, random_sobel
from simclr_tf.validation import check_number

# name -> {parameter: default}; None: the AugmentConfig field (see `_augment_defaults`).
PARAMETERS = {
    "crop": {"area": None},
    "flip": {"p": 0.5},
    "color": {"strength": None, "p": 0.8, "drop_p": 0.2},
    "jitter": {"strength": None, "p": 0.8},
    "drop": {"p": 0.2},
    "blur": {"p": 0.5},
    "cutout": {"p": 1.0, "low": 0.1, "high": 0.5},
    "sobel": {"p": 1.0},
    "noise": {"std": 0.1, "p": 1.0},
    "rotate": {"p": 1.0},
}

# Seed slots of SimCLR's view (crop, flip, colour, blur), and what each transformation uses of them.
_SLOTS = {"crop": 0, "flip": 1, "color": 2, "jitter": 2, "drop": 2, "blur": 3}
_USES = {"color": ("jitter", "drop")}
# Order of the ops inside the fused kernel: a run of transformations in increasing rank fuses.
_KERNEL_RANKS = {"flip": (0, 0), "color": (1, 2), "jitter": (1, 1), "drop": (2, 2), "blur": (3, 3)}
_FOLD_OFFSET = 1000  # fold_in(view_seed, 1000 + position): clear of anything else that folds

_ENTRY = re.compile(r"^([a-z_]+)(?:\((.*)\))?$")


def _split_top_level(spec: str) -> list[str]:
    """`spec` split at the commas outside parentheses."""
    parts, depth, current = [], 0, ""
    for char in spec:
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [part.strip() for part in parts if part.strip()]


def _parse_value(flag: str, name: str, key: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"`{flag}`: parameter `{key}` of `{name}` must be a number, e.g. "
                         f"{name}({key}={PARAMETERS[name][key] or 0.5}). Received: {text!r}.") from None


def parse_policy(spec: str, flag: str = "view_a") -> tuple[tuple[str, dict], ...]:
    """The transformations of a policy text, with only the parameters it gives.

    Args:
        spec: str. A policy (see the module docstring) or a name of `VIEW_POLICIES`.
        flag: str. The flag or field the text came from, for error messages.

    Returns:
        A tuple of `(name, {parameter: float})`, in order; `default` is returned as its
        spelled-out form (see `resolve_policy` for what it keeps).

    Raises:
        ValueError: an unknown transformation or parameter, or a malformed entry (the message
            names the flag, the entry and the choices).

    Example:

    >>> parse_policy("crop,noise(std=0.05)")
    (('crop', {}), ('noise', {'std': 0.05}))
    """
    if not isinstance(spec, str):
        raise ValueError(f"`{flag}` must be a text such as 'crop,color'. Received: {spec!r}.")
    spec = VIEW_POLICIES.get(spec.strip(), spec)
    transforms = []
    for entry in _split_top_level(spec):
        match = _ENTRY.match(entry.replace(" ", ""))
        if not match or match.group(1) not in PARAMETERS:
            raise ValueError(
                f"`{flag}`: unknown transformation {entry!r}. Use names of {', '.join(VIEW_TRANSFORMS)}, "
                f"comma-separated, each optionally with parameters, e.g. 'crop,noise(std=0.05)'; or "
                f"a named policy: {', '.join(VIEW_POLICIES)}.")
        name, arguments = match.group(1), match.group(2)
        params = {}
        for item in filter(None, (arguments or "").split(",")):
            key, equals, value = item.partition("=")
            if not equals or key not in PARAMETERS[name]:
                raise ValueError(f"`{flag}`: `{name}` takes the parameters "
                                 f"{', '.join(PARAMETERS[name])} as key=value. Received: {item!r}.")
            params[key] = _parse_value(flag, name, key, value)
        transforms.append((name, params))
    return tuple(transforms)


def resolve_policy(spec: str, augment: AugmentConfig, flag: str = "view_a") -> tuple[tuple[str, dict], ...]:
    """The transformations of a policy with every parameter filled and checked.

    Args:
        spec: str. A policy text or a name of `VIEW_POLICIES`.
        augment: `AugmentConfig`, resolved (no `None` field): the defaults of `crop`'s area and
            the colour strength; for `default`, whether it flips and blurs.
        flag: str. The flag or field the text came from, for error messages.

    Returns:
        A tuple of `(name, {parameter: value})` with every parameter of `PARAMETERS[name]`.

    Raises:
        ValueError: as `parse_policy`, or a parameter out of its range.
    """
    transforms = parse_policy(spec, flag)
    if isinstance(spec, str) and spec.strip() == "default":
        wanted = lambda name: (name != "flip" or augment.random_flip) and (name != "blur" or augment.use_blur)
        transforms = tuple((name, params) for name, params in transforms if wanted(name))
    fields = {"area": augment.crop_min_area, "strength": augment.color_jitter_strength}
    resolved = []
    for name, given in transforms:
        params = {key: given.get(key, fields.get(key) if default is None else default)
                  for key, default in PARAMETERS[name].items()}
        for key, value in params.items():
            where = f"`{flag}`: {name}({key})"
            if key == "strength":
                check_strength(value)
            elif key == "area":
                check_number(where, value, low=0, low_inclusive=False, high=1)
            elif key == "std":
                check_number(where, value, low=0)
            else:  # probabilities and cutout's side fractions
                check_number(where, value, low=0, high=1)
        if name == "cutout" and params["low"] > params["high"]:
            raise ValueError(f"`{flag}`: cutout needs low <= high. Received: low={params['low']}, "
                             f"high={params['high']}.")
        resolved.append((name, params))
    return tuple(resolved)


def describe_policy(transforms) -> str:
    """A resolved policy as text, e.g. `crop(area=0.08),rotate(p=1)`: for logs and the preview."""
    def number(value):
        return f"{value:g}"

    return ",".join(f"{name}({','.join(f'{k}={number(v)}' for k, v in params.items())})"
                    if params else name for name, params in transforms) or "identity"


def _kernel_params(name: str, seed: tf.Tensor, params: dict, impl: str) -> dict:
    if name == "flip":  # sample_flip's draw, with any probability
        return {"flip": tf.random.stateless_uniform((), seed) < params["p"]}
    if name == "blur":
        return sample_blur(seed, params["p"])
    jitter_p = params.get("p", 0.0) if name != "drop" else 0.0
    drop_p = params["drop_p"] if name == "color" else (params["p"] if name == "drop" else 0.0)
    drawn = sample_color(seed, params.get("strength", 0.0), impl, jitter_p, drop_p)
    if name == "jitter":
        drawn.pop("drop")  # leaves a colour drop drawn by an earlier op of the run in place
    return drawn


def _apply(name: str, view: tf.Tensor, seed: tf.Tensor, params: dict) -> tf.Tensor:
    if name == "cutout":
        return random_cutout(view, seed, side_range=(params["low"], params["high"]), p=params["p"])
    if name == "sobel":
        return random_sobel(view, seed, p=params["p"])
    if name == "noise":
        return random_gaussian_noise(view, seed, std=params["std"], p=params["p"])
    return random_rotate(view, seed, p=params["p"])


def apply_policy(image, seed: tf.Tensor, transforms, *, image_size: int, impl: str = "v2") -> tf.Tensor:
    """One view of `image`: the resolved `transforms` applied in order (see the module docstring).

    Args:
        image: uint8 (0-255) or float (0-1) tensor of shape `(height, width, 3)`.
        seed: int32/int64 tensor of shape `(2,)`, checked.
        transforms: the output of `resolve_policy`.
        image_size: int. Side of the square view.
        impl: str. Colour-jitter implementation, `v2` or `v1`.

    Returns:
        float32 tensor of shape `(image_size, image_size, 3)` in `[0, 1]`.
    """
    shape = (image_size, image_size, 3)
    seeds = split_seed(seed, 4)  # (4, 2): crop, flip, colour, blur
    used: set[str] = set()
    view = None
    if not transforms or transforms[0][0] != "crop":
        view = resize_bicubic(check_image(image), image_size)
    pending, last_rank = {}, -1

    def flush(view, pending):
        if not pending:
            return view
        return apply_view_ops(view, pending, impl=impl, kernel_size=blur_kernel_size(image_size))

    for position, (name, params) in enumerate(transforms):
        uses = _USES.get(name, (name,))
        if name in _SLOTS and not used.intersection(uses):
            op_seed = seeds[_SLOTS[name]]
        else:
            op_seed = tf.random.experimental.stateless_fold_in(seed, _FOLD_OFFSET + position)
        used.update(uses)
        if name in _KERNEL_RANKS:
            first, last = _KERNEL_RANKS[name]
            if first <= last_rank:
                view, pending = flush(view, pending), {}
            pending.update(_kernel_params(name, op_seed, params, impl))
            last_rank = last
            continue
        view, pending, last_rank = flush(view, pending), {}, -1
        if name == "crop":
            view = random_resized_crop(image if view is None else view, op_seed, output_size=image_size,
                                       area_range=(params["area"], 1.0))
        else:
            view = _apply(name, view, op_seed, params)
        view = tf.ensure_shape(view, shape)
    return tf.ensure_shape(flush(view, pending), shape)
