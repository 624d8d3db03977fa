"""The torch Dataset: images decoded and resized to the network input through the codec, labels moved with them.

Two sources give the same samples: ``HandDataset`` decodes the JPEGs per sample; ``data.cache.CachedHandDataset``
reads whole batches from the decoded uint8 cache. ``data.cache.make_dataset(split, size, cache)`` picks one.
"""
import numpy as np
import torch
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


def input_labels(split, rows, affines):
    """Labels of ``rows`` (B,) of ``split`` for input images made by ``affines`` (B, 2, 3) original -> input,
    computed batched through the codec. Returns tensors: K (B, 3, 3) float32 of the input image, bone_length (B,)
    float32 (NaN when the split has no scale), id, ann_id (B,) int64, and when labelled xyz, uvd (B, 21, 3) float32."""
    rows = np.asarray(rows, dtype=np.int64)
    K = geometry.transform_K(affines, split.K[rows])                                  # (B, 3, 3) float64
    bone = np.full(len(rows), np.nan) if split.scale is None else split.scale[rows]
    labels = {"K": torch.from_numpy(K.astype(np.float32)),
              "bone_length": torch.from_numpy(bone.astype(np.float32)),
              "id": torch.from_numpy(split.image_ids[rows]),
              "ann_id": torch.from_numpy(split.ann_ids[rows])}
    if split.labelled:
        xyz = split.xyz[rows]                                                          # (B, 21, 3) float64
        labels["xyz"] = torch.from_numpy(xyz.astype(np.float32))
        labels["uvd"] = torch.from_numpy(geometry.xyz_to_uvd(xyz, K).astype(np.float32))
    return labels


class HandDataset(torch.utils.data.Dataset):
    """Samples of a ``data.readers.Split`` at the network input size, decoded from the JPEGs per sample.

    Each sample is a dict of tensors:
      image (3, S, S) uint8 RGB; mask (S, S) uint8 in {0, 1} (zeros when has_mask is False); has_mask ();
      K (3, 3) float32 camera matrix of the input image (original K moved by the resize affine);
      bone_length () float32 metres of geometry.SCALE_BONE from *_scale.json, NaN when the split has none;
      id, ann_id () int64; and when the split is labelled: xyz (21, 3) float32 metres, uvd (21, 3) float32
      model space of the input image.
    """
    batched = False  # per-sample __getitem__; make_loader collates

    def __init__(self, split, img_size):
        self.split = split
        self.size = int(img_size)

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        split = self.split
        image, affine = decode_image(split.image_paths[i], self.size)
        mask_path = split.mask_paths[i] if split.mask_paths is not None else None
        mask = np.zeros((self.size, self.size), np.uint8) if mask_path is None else decode_mask(mask_path, self.size)
        labels = input_labels(split, [i], affine[None])
        return {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
                "mask": torch.from_numpy(mask),
                "has_mask": torch.tensor(mask_path is not None),
                **{key: value[0] for key, value in labels.items()}}
