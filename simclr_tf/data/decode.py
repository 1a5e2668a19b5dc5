"""Decoding one image file: by Pillow (`read_image`), or by `tf.io` ops in the `tf.data` graph
(`tf_decode`), and the header probe (`probe`) that decides which, for `simclr_tf.data.folder`.

Ordinary JPEG, PNG, GIF and BMP files (8-bit grey, RGB, palette or RGBA) are decoded by TensorFlow,
to the same pixels Pillow gives; the rest (16-bit, CMYK, palettes with transparency, animations,
WebP, TIFF, ...) by Pillow. Large JPEGs are decoded at reduced size (DCT scaling) either way.

This module imports nothing of simclr_tf.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

# Images with more pixels than this are decoded at reduced size (JPEG) or skipped (other formats):
# 80 MP is 240 MB as RGB, and several images are decoded in parallel. Pillow itself refuses images
# above 2 * Image.MAX_IMAGE_PIXELS (about 179 MP) with a DecompressionBombError, which we catch.
MAX_PIXELS = 80_000_000


class _TooLargeError(ValueError):
    pass


def _draft_scale(width: int, height: int, image_size: int | None, max_pixels: int) -> int | None:
    """JPEG DCT downscale factor (1, 2, 4 or 8) to decode with, or None if even 1/8 is too large."""
    for scale in (1, 2, 4, 8):
        if width * height / scale**2 <= max_pixels:
            break
    else:
        return None
    if image_size:  # decode smaller still while the shorter side stays >= image_size
        while scale < 8 and min(width, height) / (scale * 2) >= image_size:
            scale *= 2
    return scale


def _to_rgb(image) -> np.ndarray:
    """Any Pillow image (L, P, RGBA, CMYK, I;16, F, ...) as a uint8 RGB array (H, W, 3)."""
    from PIL import Image

    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image).astype(np.int64)
        if mode == "I" and values.max(initial=0) <= 255:  # 32-bit container holding 8-bit values
            grey = np.clip(values, 0, 255)
        else:  # 16-bit: 0..65535 -> 0..255, rounded
            grey = (np.clip(values, 0, 65535) * 255 + 32767) // 65535
        return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=-1)
    if mode == "F":
        values = np.asarray(image, np.float64)
        values = values * 255.0 if np.nanmax(values, initial=0.0) <= 1.0 else values
        grey = np.clip(np.nan_to_num(np.round(values)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:  # composite on white: transparent regions look like paper, not black
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, np.uint8)


def read_image(path: str, *, image_size: int | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decodes one image file with Pillow into a uint8 RGB array `(height, width, 3)`.

    Grayscale, palette, RGBA / LA (composited on white), CMYK and 16-bit images are converted; of an
    animated GIF the first frame is used. JPEGs are decoded at reduced size (DCT scaling) when they
    exceed `max_pixels` or are much larger than `image_size`, which keeps big photos cheap.

    Args:
        path: str. The image file.
        image_size: int or None. If given, images whose shorter side is longer are downscaled so the
            shorter side equals `image_size` (aspect ratio kept). Never upscales.
        max_pixels: int. Largest number of pixels decoded at full size.

    Returns:
        uint8 array `(height, width, 3)`.

    Raises:
        OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError: the file is not a readable
            image (e.g. zero bytes, truncated, corrupt) or is too large to decode safely.
    """
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
        if width <= 0 or height <= 0:
            raise ValueError(f"image has no pixels ({width}x{height})")
        if image.format == "JPEG":
            scale = _draft_scale(width, height, image_size, max_pixels)
            if scale is None:
                raise _TooLargeError(f"{width}x{height} is too large even at 1/8 scale")
            if scale > 1:
                image.draft(image.mode, (width // scale, height // scale))
        elif width * height > max_pixels:
            raise _TooLargeError(
                f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} "
                f"({image.format} cannot be decoded at reduced size); downscale it or convert it to JPEG"
            )
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        image.load()
        if width * height > max_pixels and image.size[0] * image.size[1] > max_pixels:
            raise _TooLargeError(f"{width}x{height} is still too large after reduced-size decoding")
        rgb = _to_rgb(image)  # (H, W, 3)
    height, width = rgb.shape[:2]
    if image_size and min(height, width) > image_size:
        factor = image_size / min(height, width)
        new_size = (max(image_size, round(width * factor)), max(image_size, round(height * factor)))
        rgb = np.asarray(Image.fromarray(rgb).resize(new_size, Image.Resampling.BILINEAR, reducing_gap=2.0))
    return rgb


# How a file is decoded: a branch of `tf_decode` (JPEG at DCT scale 1/1, 1/2, 1/4, 1/8; PNG, GIF or BMP
# as RGB; PNG with an alpha channel, composited on white), or Pillow.
PILLOW = -1
_JPEG_RATIOS = (1, 2, 4, 8)
_TF_IMAGE = len(_JPEG_RATIOS)
_TF_ALPHA = _TF_IMAGE + 1

_TF_PNG_RAWMODES = {"RGB": _TF_IMAGE, "L": _TF_IMAGE, "P": _TF_IMAGE, "RGBA": _TF_ALPHA, "LA": _TF_ALPHA}


def _tile_rawmode(image) -> str | None:
    if len(image.tile) != 1:
        return None
    args = image.tile[0][3]
    return args if isinstance(args, str) else args[0] if args else None


def _decoder(image, scale: int) -> int:
    """The branch of `tf_decode` that decodes this file like `read_image` would, or `PILLOW`.

    TensorFlow is given only what it decodes to the same pixels as Pillow: 8-bit files without a
    transparent colour (which Pillow composites on white), GIFs of one frame covering the whole
    picture, BMPs only if uncompressed 24 or 32 bits.
    """
    fmt = image.format
    if "transparency" in image.info:
        return PILLOW
    if fmt == "JPEG":
        return _JPEG_RATIOS.index(scale) if image.mode in ("RGB", "L") else PILLOW
    rawmode = _tile_rawmode(image)
    if fmt == "PNG" and not getattr(image, "is_animated", False):  # APNG: Pillow reads its first frame
        return _TF_PNG_RAWMODES.get(rawmode, PILLOW)
    if (fmt == "GIF" and image.mode in ("P", "L") and tuple(image.tile[0][1]) == (0, 0, *image.size)
            and not image.is_animated):  # TensorFlow would decode every frame to keep the first
        return _TF_IMAGE
    if fmt == "BMP" and image.tile[0][0] == "raw" and rawmode in ("BGR", "BGRX"):
        return _TF_IMAGE
    return PILLOW


def _decoded_size(width: int, height: int, scale: int, image_size: int | None) -> tuple[int, int]:
    """`(height, width)` of `read_image`'s result: after DCT scaling (rounded up) and downscaling."""
    width, height = -(-width // scale), -(-height // scale)
    if image_size and min(height, width) > image_size:
        factor = image_size / min(height, width)
        return max(image_size, round(height * factor)), max(image_size, round(width * factor))
    return height, width


def probe(path: str, max_pixels: int, image_size: int | None = None) -> tuple[str | None, tuple]:
    """Why the file cannot be used (cheap: reads the header only), or None if it looks fine; and how
    to decode it: `(branch, height, width, resize)`, the `tf_decode` branch (or `PILLOW`), the size
    of the decoded image and whether it is resized to it after decoding."""
    from PIL import Image

    unused = (PILLOW, 0, 0, False)
    try:
        with Image.open(path) as image:
            width, height = image.size
            fmt = image.format
            if width <= 0 or height <= 0:
                return f"image has no pixels ({width}x{height})", unused
            scale = 1
            if fmt == "JPEG":
                scale = _draft_scale(width, height, image_size, max_pixels)
                if scale is None:
                    return f"{width}x{height} JPEG is too large even at 1/8 scale", unused
            elif width * height > max_pixels:
                return (f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} and "
                        f"{fmt} cannot be decoded at reduced size"), unused
            branch = _decoder(image, scale)
        size = _decoded_size(width, height, scale, image_size)
        return None, (branch, *size, size != _decoded_size(width, height, scale, None))
    except Image.DecompressionBombError as error:
        return f"too large to decode safely ({error})", unused
    except Exception as error:  # any unreadable file is skipped, never fatal
        return (f"{type(error).__name__}: {error}" if str(error) else type(error).__name__), unused


def tf_decode(path: tf.Tensor, branch: tf.Tensor, size: tf.Tensor, resize: tf.Tensor) -> tf.Tensor:
    """Decodes one file with `tf.io` as `read_image` does with Pillow: uint8 RGB `(height, width, 3)`.

    Args:
        path: string scalar. The file.
        branch: int32 scalar. How (see `_decoder`): a JPEG DCT scale, RGB, or RGBA composited on white.
        size: int32 `(2,)`. Height and width of the result.
        resize: bool scalar. Downscale to `size` (antialiased bilinear, as Pillow's BILINEAR).
    """
    data = tf.io.read_file(path)

    def jpeg(ratio):  # Pillow's libjpeg defaults: accurate integer DCT, fancy upsampling
        return lambda: tf.io.decode_jpeg(data, channels=3, ratio=ratio, dct_method="INTEGER_ACCURATE")

    def rgb():  # PNG, GIF (first frame) or BMP
        return tf.ensure_shape(tf.io.decode_image(data, channels=3, expand_animations=False), [None, None, 3])

    def on_white():  # as Pillow's alpha_composite on an opaque white picture
        rgba = tf.cast(tf.io.decode_png(data, channels=4), tf.float32)
        alpha = rgba[..., 3:] / 255.0
        return tf.cast(tf.round(rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)), tf.uint8)

    image = tf.switch_case(branch, [*(jpeg(r) for r in _JPEG_RATIOS), rgb, on_white])

    def downscale():
        small = tf.image.resize(image, size, method="bilinear", antialias=True)
        return tf.cast(tf.round(tf.clip_by_value(small, 0.0, 255.0)), tf.uint8)

    return tf.cond(resize, downscale, lambda: image)
