"""Decoding a dataset image or mask at the network input size, the one way both datasets and the cache see them."""
import numpy as np
from PIL import Image

from core import geometry
from core.common import UserError
from core.picture_files import open_as_shown


def decode_image(path, size, mode="RGB"):
    """Decode ``path`` and fit it into a size x size input (centred, zero-padded if not square).

    Returns (pixels uint8 (size, size, 3) or (size, size) for mode 'L', affine (2, 3) original -> input).
    """
    try:
        image, reduction = open_as_shown(path, mode, fit=size)   # reduction: the picture's pixels -> image's
    except FileNotFoundError:
        raise UserError(f"image {path} is missing; re-extract the dataset") from None
    except OSError as err:  # PIL raises OSError subclasses for truncated or unreadable files
        raise UserError(f"cannot decode image {path} ({err}); replace it with the file from the dataset "
                        f"archive") from None
    affine = input_affine(image.size, reduction, size)
    x0, y0, side = geometry.square_box(*image.size)
    if image.size != (side, side):
        canvas = Image.new(mode, (side, side))
        canvas.paste(image, (-x0, -y0))
        image = canvas
    if side != size:
        image = image.resize((size, size), Image.BILINEAR)  # antialiased; pixel areas map as in the codec
    return np.asarray(image), affine


def input_affine(decoded_size, reduction, size):
    """The affine (2, 3) from a picture's pixels to the size x size input that ``decode_image`` makes of it: the
    picture decoded at ``decoded_size`` (``reduction`` maps to that scale), fitted into the square."""
    return geometry.compose_affine(geometry.crop_resize_affine(geometry.square_box(*decoded_size), size), reduction)


def decode_mask(path, size):
    """A mask JPEG at the input size: (size, size) uint8 in {0, 1}."""
    return (decode_image(path, size, mode="L")[0] >= 128).astype(np.uint8)
