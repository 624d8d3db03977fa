"""Marker datasets for geometry tests: every joint is drawn as a bright Gaussian blob at its exact projection,
so a transform that moves pixels and labels differently shows up as a distance between a label and its blob.

Written in the FreiHAND v2 layout (one image version, or several) or the MP21 layout, with per-sample K whose
principal points are off-centre, and optionally non-square images.
"""
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from core import geometry

BLOB_SIGMA = 2.0     # px
MIN_SPACING = 16.0   # px between marks, so blobs never merge
MARGIN = 6           # px: a mark whose centre is this far inside the image lies fully inside it
MARKER_SIZE = 160    # side of the in-memory marker images of ``marker_batch``


def _marker_uv(rng, width, height, margin=24):
    """21 well-separated pixel positions inside the image."""
    uv = []
    while len(uv) < 21:
        p = rng.uniform([margin, margin], [width - 1 - margin, height - 1 - margin])
        if all(np.hypot(*(p - q)) >= MIN_SPACING for q in uv):
            uv.append(p)
    return np.array(uv)


def _draw_blobs(uv, width, height):
    """(H, W) uint8 image with a Gaussian blob centred exactly on each uv (pixel centres on integers)."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    d2 = (u[None] - uv[:, 0, None, None]) ** 2 + (v[None] - uv[:, 1, None, None]) ** 2  # (21, H, W)
    return np.clip(255.0 * np.exp(-d2 / (2 * BLOB_SIGMA ** 2)).max(0), 0, 255).round().astype(np.uint8)


def make_sample(rng, width, height):
    """One marker sample: (image uint8 (H, W, 3), mask uint8 (H, W), K (3, 3), xyz (21, 3))."""
    focal = rng.uniform(400, 700)
    cx, cy = width / 2 + rng.uniform(-20, 20), height / 2 + rng.uniform(-20, 20)
    K = np.array([[focal, 0, cx], [0, focal * rng.uniform(0.98, 1.02), cy], [0, 0, 1.0]])
    uv = _marker_uv(rng, width, height)
    z = rng.uniform(0.55, 0.75, size=21)
    xyz = geometry.unproject(uv, z, K)
    blobs = _draw_blobs(uv, width, height)
    image = np.stack([blobs, (blobs * 0.8).astype(np.uint8), blobs], -1)
    mask = (ndimage.binary_dilation(blobs > 20, iterations=6) * 255).astype(np.uint8)
    return image, mask, K, xyz


def write_marker_dataset(root, n=6, size=(224, 224), layout="freihand", versions=1, n_eval=3, seed=0):
    """Write a marker dataset; returns its root. ``size`` is (width, height) of every image."""
    root, rng = Path(root), np.random.default_rng(seed)
    folders = {"freihand": [("training", "training/rgb", n), ("evaluation", "evaluation/rgb", n_eval)],
               "mp21": [("train", "train", n), ("val", "val", n_eval), ("test", "test", n_eval)]}[layout]
    for prefix, image_dir, count in folders:
        samples = [make_sample(rng, *size) for _ in range(count)]
        (root / image_dir).mkdir(parents=True, exist_ok=True)
        for version in range(versions if prefix in ("training", "train") else 1):
            for i, (image, *_rest) in enumerate(samples):
                Image.fromarray(image).save(root / image_dir / f"{version * count + i:08d}.jpg", quality=95)
        if prefix == "training":
            (root / "training/mask").mkdir(parents=True, exist_ok=True)
            for i, (_img, mask, *_rest) in enumerate(samples):
                Image.fromarray(mask).save(root / "training/mask" / f"{i:08d}.jpg", quality=95)
        _dump(root / f"{prefix}_K.json", [s[2] for s in samples])
        if prefix != "test":
            _dump(root / f"{prefix}_xyz.json", [s[3] for s in samples])
        if layout == "freihand":
            _dump(root / f"{prefix}_scale.json", [geometry.bone_length(s[3]) for s in samples])
    return root


def _dump(path, arrays):
    path.write_text(json.dumps([np.asarray(a).tolist() for a in arrays]))


def find_marks(image):
    """Intensity-weighted centroids (M, 2) as (u, v) of the bright blobs of an (H, W[, 3]) uint8 image."""
    gray = np.asarray(image, np.float64)
    gray = gray.mean(-1) if gray.ndim == 3 else gray
    labels, count = ndimage.label(gray > 50)
    centres = ndimage.center_of_mass(np.where(labels > 0, gray, 0), labels, range(1, count + 1))
    return np.array([(c[1], c[0]) for c in centres]).reshape(-1, 2)


def label_errors(uv, image):
    """Distance (J,) from each label uv (J, 2) to the nearest blob centroid in ``image``."""
    marks = find_marks(image)
    return np.linalg.norm(np.asarray(uv)[:, None] - marks[None], axis=-1).min(1)


def centred_marker_image(rng, size):
    """(image uint8 (S, S, 3), uv (21, 2)) of a size x size marker image whose blobs all lie inside the inscribed
    circle, so that any rotation about the image centre keeps every blob whole inside the frame."""
    centre, radius = (size - 1) / 2.0, (size - 1) / 2.0 - 4 * BLOB_SIGMA - 1
    uv = []
    while len(uv) < 21:
        p = rng.uniform(centre - radius, centre + radius, size=2)
        if np.hypot(*(p - centre)) <= radius and all(np.hypot(*(p - q)) >= MIN_SPACING for q in uv):
            uv.append(p)
    uv = np.array(uv)
    blobs = _draw_blobs(uv, size, size)
    return np.stack([blobs, (blobs * 0.8).astype(np.uint8), blobs], -1), uv


def marker_batch(count=3, seed=0):
    """(images uint8 (B, 3, S, S), mark uv (B, 21, 2)) of centred marker images."""
    rng = np.random.default_rng(seed)
    samples = [centred_marker_image(rng, MARKER_SIZE) for _ in range(count)]
    images = torch.from_numpy(np.stack([s[0] for s in samples])).permute(0, 3, 1, 2).contiguous()
    return images, np.stack([s[1] for s in samples])


def mark_errors(images, uv):
    """Label-to-mark distances over joints whose mark lies fully inside its image."""
    errors = []
    for image, points in zip(images, uv):
        inside = ((points >= MARGIN) & (points <= image.shape[0] - 1 - MARGIN)).all(1)
        errors.append(label_errors(points, image)[inside])
    return np.concatenate(errors)


def assert_on_marks(images, uv, min_joints=50):
    """Labels uv (B, 21, 2) sit on the marks of images (B, H, W, 3): within a pixel, the worst 5 % within two."""
    errors = mark_errors(images, uv)
    assert len(errors) >= min_joints
    assert np.median(errors) <= 1.0 and np.percentile(errors, 95) <= 2.0, (np.median(errors), errors.max())
