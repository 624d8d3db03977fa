"""Pictures read as an image viewer shows them, for the datasets' images and one's own pictures alike: the EXIF
orientation applied, 16-bit and float samples scaled to 8 bits, transparency composited over white, palette,
greyscale and CMYK converted, any size; a huge JPEG is decoded at a reduced scale (1/2, 1/4 or 1/8, libjpeg's own)
that still covers the network input, so its pixels never all sit in memory."""
import contextlib
import math

import numpy as np
from PIL import Image, ImageOps

from core import geometry
from core.common import UserError

HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
ORIENTATION_TAG = 0x0112
SWAPPING_ORIENTATIONS = (5, 6, 7, 8)   # EXIF orientations that turn the picture by 90 degrees
WHITE = (255, 255, 255, 255)


@contextlib.contextmanager
def _opened(path, fit):
    """(open PIL image, its size as shown at the scale it will decode at, affine (2, 3) from the shown picture's
    pixels to that scale's). With ``fit`` (px), a JPEG whose sides are at least twice ``fit`` decodes at the
    smallest scale whose sides stay at least ``fit``; else at full scale (the identity). Only headers are read."""
    try:
        with Image.open(path) as image:
            width = image.size[0]
            if fit and image.format == "JPEG" and min(image.size) >= 2 * fit:
                image.draft(None, (fit, fit))
            scale = 2 ** round(math.log2(width / image.size[0]))   # 1, 2, 4 or 8 picture pixels per image pixel
            size = image.size
            if image.getexif().get(ORIENTATION_TAG) in SWAPPING_ORIENTATIONS:
                size = size[::-1]
            yield image, size, geometry.crop_resize_affine((0, 0, scale), 1)
    except Image.DecompressionBombError as err:
        raise UserError(f"picture {path} is too large to open safely ({err}); scale it down") from None


def open_as_shown(path, mode="RGB", fit=None):
    """(image in ``mode`` as a viewer shows it, affine (2, 3) from the shown picture's pixels to the image's; see
    ``_opened`` for ``fit``). A broken file raises PIL's OSError."""
    with _opened(path, fit) as (image, _, reduction):
        shown = ImageOps.exif_transpose(image)
        shown.load()
    return in_mode(shown, mode), reduction


def shown_layout(path, fit=None):
    """(size (width, height) that ``open_as_shown(path, fit=fit)`` returns, its affine), from the headers alone."""
    with _opened(path, fit) as (_, size, reduction):
        return size, reduction


def in_mode(image, mode):
    """``image`` converted to ``mode`` as a viewer would show it."""
    if image.mode in HIGH_DEPTH_MODES:
        values = np.asarray(image, dtype=np.float64)
        top = 1.0 if image.mode == "F" and values.max() <= 1.0 else (65535.0 if values.max() > 255 else 255.0)
        image = Image.fromarray(np.clip(np.round(values * 255.0 / top), 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        image = Image.alpha_composite(Image.new("RGBA", image.size, WHITE), image.convert("RGBA"))
    return image.convert(mode)
