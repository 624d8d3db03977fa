"""Prediction on one's own pictures (predict.py --images): crops of one hand each, any size, JPEG or PNG.

Each picture is fitted into the network input as the datasets are (data.dataset.decode_image: centred, padded
to a square, resized), so the pictures become a ``data.readers.Split`` without labels and go through the same
prediction as a dataset split. The camera: ``--focal PX`` (principal point at the picture's centre) or a K file;
else DEFAULT_FOCAL_PER_SIDE times the picture's longer side, as in a FreiHAND-like crop, which gives root-relative
joints but no trustworthy camera-space ones.
"""
import json
from pathlib import Path

import numpy as np

from core import geometry
from core.common import UserError, atomic_write
from core.json_files import json_text
from core.picture_files import open_as_shown
from data.readers import Split, check_cameras

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
DEFAULT_FOCAL_PER_SIDE = 2.5


def list_pictures(paths):
    """The picture files named by ``paths`` (files, or folders whose JPEG/PNG files are taken, sorted)."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise UserError(f"--images {path}: the folder holds no .jpg, .jpeg or .png file")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"--images {path}: no such file or folder")
    return files


def picture_sizes(files):
    """(N, 2) width, height of every picture, each fully decoded once, so an unreadable one stops the run
    before any work, in one line naming it."""
    sizes = []
    for path in files:
        try:
            sizes.append(open_as_shown(path)[0].size)       # as a viewer shows it: the EXIF orientation applied
        except OSError as err:  # PIL's error for a missing, truncated or non-image file
            raise UserError(f"cannot read picture {path} ({type(err).__name__}: {err}); it must be a JPEG or PNG "
                            f"picture: replace or remove it") from None
    return np.array(sizes, dtype=np.float64)


def centred_cameras(sizes, focal):
    """K (N, 3, 3) with focal length ``focal`` px (a number, or None for the default per picture) and the
    principal point at each picture's centre (pixel centres on integers)."""
    f = DEFAULT_FOCAL_PER_SIDE * sizes.max(1) if focal is None else np.full(len(sizes), float(focal))
    K = np.zeros((len(sizes), 3, 3))
    K[:, 0, 0], K[:, 1, 1], K[:, 2, 2] = f, f, 1.0
    K[:, :2, 2] = (sizes - 1.0) / 2.0
    return K


def read_cameras(path, count):
    """K (count, 3, 3) from a JSON file holding one 3x3 matrix (every picture) or a list of ``count``."""
    try:
        K = np.asarray(json.loads(Path(path).read_text()), dtype=np.float64)
    except (OSError, ValueError) as err:
        raise UserError(f"--camera {path}: cannot read a JSON camera matrix ({err})") from None
    if K.shape == (3, 3):
        K = np.broadcast_to(K, (count, 3, 3)).copy()
    if K.shape != (count, 3, 3):
        raise UserError(f"--camera {path}: holds shape {K.shape}; give one 3x3 matrix or a list of {count} "
                        f"(one per picture, in the order the pictures are read)")
    check_cameras(K, path)
    return K


def pictures_split(files, K):
    """The pictures as an unlabelled Split (image ids 0..N-1 in the order given)."""
    ids = np.arange(len(files), dtype=np.int64)
    return Split(name="images", layout="images", root=Path(files[0]).parent, image_paths=[str(f) for f in files],
                 image_ids=ids, ann_ids=ids, K=K, xyz=None, scale=None, mask_paths=None,
                 num_annotations=len(files))


def write_joints(prefix, files, uv, xyz, K, camera_known, hand):
    """PREFIX.json and PREFIX.npz: per picture the 2D joints in its own pixels (N, 21, 2), the root-relative 3D
    joints in metres (N, 21, 3), and when ``camera_known`` the camera-space joints (metres) and K. Returns the
    two paths."""
    relative = xyz - xyz[:, geometry.ROOT_JOINT:geometry.ROOT_JOINT + 1]
    arrays = {"files": np.array([str(f) for f in files]), "uv_px": uv, "xyz_root_relative_m": relative, "K": K,
              "hand": np.array(hand)}
    if camera_known:
        arrays["xyz_camera_m"] = xyz
    entries = []
    for row, path in enumerate(files):
        entry = {"file": str(path), "hand": hand, "uv_px": uv[row].round(3).tolist(),
                 "xyz_root_relative_m": relative[row].round(6).tolist()}
        if camera_known:
            entry.update(xyz_camera_m=xyz[row].round(6).tolist(), K=K[row].tolist())
        entries.append(entry)
    json_path, npz_path = Path(f"{prefix}.json"), Path(f"{prefix}.npz")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(json_path) as tmp:
        tmp.write_text(json_text({"joint_order": "freihand", "camera_known": camera_known, "pictures": entries},
                                  indent=1))
    with atomic_write(npz_path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
    return json_path, npz_path
