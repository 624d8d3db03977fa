"""The torch Dataset: images decoded and resized to the network input through the codec, labels moved with them.

Two sources give the same samples: ``HandDataset`` decodes the JPEGs per sample (``data.decoding``);
``CachedHandDataset`` reads whole batches from the decoded uint8 cache (``data.cache_store``).
``make_dataset(split, size, cache)`` picks one.
"""
import numpy as np
import torch
from core import geometry
from data.cache_store import open_cache
from data.decoding import decode_image, decode_mask


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


# --- the cached Dataset and the factory -------------------------------------------------------------------

def _empty(shape):
    """An uninitialised uint8 tensor; inside a loader worker it is allocated in shared memory, so handing the
    batch to the main process copies nothing (as torch's default_collate does)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(int(np.prod(shape)))
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)


class CachedHandDataset(torch.utils.data.Dataset):
    """HandDataset's samples, read from the decoded cache a batch at a time.

    ``__getitems__(indices)`` returns the batch dict directly (make_loader passes it through): one sorted
    fancy-index into the memory map per array, labels precomputed once for the split with the codec. The
    batch's ``image`` (B, 3, S, S) uint8 is a channels_last view of the cached (B, S, S, 3) rows (no CPU
    transpose); other keys, shapes and dtypes as HandDataset documents, batched.
    """
    batched = True

    def __init__(self, split, img_size, cache_root=None, workers=None):
        self.split, self.size = split, int(img_size)
        self.cache = open_cache(split, self.size, cache_root, workers)
        self.labels = {"has_mask": torch.from_numpy(self.cache.mask_rows >= 0),     # (N, ...) tensors
                       **input_labels(split, np.arange(len(split)), self.cache.affines)}

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        return {key: value[0] for key, value in self.__getitems__([i]).items()}

    def __getitems__(self, indices):
        rows = np.asarray(indices, dtype=np.int64)                     # (B,)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"indices out of range for {len(self)} samples")
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]                                          # ascending: one sequential pass
        b, s = len(rows), self.size
        image = _empty((b, s, s, 3))
        image.numpy()[order] = self.cache.images[ordered]              # (B, S, S, 3) in the requested order
        mask = _empty((b, s, s))
        mask_rows = self.cache.mask_rows[ordered]
        have = mask_rows >= 0
        mask.numpy()[order[~have]] = 0                                 # numpy copies: no thread-pool wake-ups
        if have.any():
            mask.numpy()[order[have]] = self.cache.masks[mask_rows[have]]
        picked = torch.from_numpy(rows)
        return {"image": image.permute(0, 3, 1, 2), "mask": mask,
                **{key: value[picked] for key, value in self.labels.items()}}


def make_dataset(split, img_size, cache=False, cache_root=None):
    """The Dataset of ``split`` at ``img_size``: from the decoded uint8 cache (built on first use, see
    ``data.cache_store``) when ``cache``, else decoding the JPEGs per sample. Both give the samples documented in
    ``HandDataset``; the cached one serves whole batches (``__getitems__``)."""
    if not cache:
        return HandDataset(split, img_size)
    return CachedHandDataset(split, img_size, cache_root=cache_root)
