"""Procedural synthetic right hands written in the FreiHAND v2 layout: the project's embedded default dataset.

Each sample is a kinematic right hand (21 joints, FreiHAND order) with anatomical joint limits and varied
bone lengths, seen as FreiHAND's capture rig sees hands: held up in front of the camera, palm or back towards
it, tilted and turned in the image plane around fingers-up, centred in the crop at a random distance, with its
own K. It is rendered as z-buffered, Lambert-shaded tapered capsules (one per bone, plus a wrist stub) and a
palm polygon over a smooth background (a gradient with soft blotches, like a lit backdrop); the z-buffer's
coverage is the hand mask. Clutter is what the background-swap augmentation adds, as for FreiHAND's
green-screen images.

Hand frame (before the view rotation), metres, wrist at the origin: x radial (towards the thumb), y distal
(towards the fingers), z volar (out of the palm). Positive flexion turns a bone from +y towards +z.

    python -m data.synthetic --out DIR --train N --eval M --seed S [--size 224] [--versions V] [--workers W]
"""
import argparse
import contextlib
import functools
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from core.common import UserError, atomic_write, cli, fork_pool, progress, usable_cores
from core.geometry import BONES
from core.geometry import ROOT_JOINT, SCALE_BONE, bone_length, project
from core.json_files import json_text
from data.hand_model import WRIST_STUB_M, rotation, sample_hand

# --- Camera, rendering and output --------------------------------------------------------------------------
FOCAL_PX = (400.0, 700.0)         # at 224 px; scaled with the image size
PRINCIPAL_OFFSET_PX = 15.0        # principal point off the image centre by up to this much (at 224 px)
JOINT_MARGIN = 0.06               # every joint projects at least this fraction of the size inside the border
HAND_FILL = (0.75, 1.0)           # projected hand radius, as a fraction of the room left by the margin
CENTRE_JITTER = 0.05              # the joints' box centre is off the image centre by this sd (fraction of the size)
VIEW_TILT_SD_DEG = 35.0           # palm normal tilted off the camera axis: half-normal with this sd ...
VIEW_TILT_MAX_DEG = 85.0          # ... capped here (never edge-on)
VIEW_ROLL_SD_DEG = 45.0           # in-plane turn of the fingers away from pointing up in the image
MIN_DEPTH_M = 0.2                 # no joint nearer the camera than this
SKIN_TONES = np.array([[255, 224, 196], [241, 194, 164], [224, 172, 130], [198, 134, 96],
                       [160, 100, 66], [120, 74, 50], [84, 52, 36]], dtype=np.float32)
PALM_TINT = np.array([255, 196, 186], dtype=np.float32)   # palms are lighter and pinker than backs
JPEG_QUALITY = 92
GENERATOR_VERSION = 2             # bumped whenever the same settings would draw other hands or pictures
SETTINGS_FILE = "synthetic.json"  # what made a set: the version and generate()'s settings
SPLIT_IDS = {"training": 0, "evaluation": 1}


# --- Views and cameras ------------------------------------------------------------------------------------------

def sample_view(rng):
    """Rotation (3, 3) from the hand frame to the camera frame (x right, y down, z forward): palm or back
    towards the camera (even odds), tilted about a random in-image axis, then turned in the image plane."""
    palm_to_camera = rng.uniform() < 0.5
    # fingers (y) up in the image (-y); volar (z) towards the camera (-z) or away (+z); x completes the frame
    facing = rotation(0, 180.0) if palm_to_camera else rotation(2, 180.0)
    tilt = min(abs(rng.normal(0.0, VIEW_TILT_SD_DEG)), VIEW_TILT_MAX_DEG)
    tilt_axis = rng.uniform(0.0, 360.0)
    tilted = rotation(2, tilt_axis) @ rotation(0, tilt) @ rotation(2, -tilt_axis)
    return rotation(2, rng.normal(0.0, VIEW_ROLL_SD_DEG)) @ tilted @ facing


def sample_camera(rng, size):
    """A FreiHAND-like K (3, 3): square pixels, focal and principal point scaled to the image size."""
    f = round(rng.uniform(*FOCAL_PX) * size / 224, 3)
    cx, cy = np.round((size - 1) / 2 + rng.uniform(-1, 1, 2) * PRINCIPAL_OFFSET_PX * size / 224, 3)
    return np.array([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]])


def place_hand(root_relative, K, size, rng):
    """Translate root-relative camera points (P, 3) to a random depth and an offset that centres the first 21
    (the joints) in the image, give or take CENTRE_JITTER, inside the image margin. Returns the placed points
    (P, 3), rounded to micrometres."""
    margin = JOINT_MARGIN * size
    room = (size - 1) / 2 - margin - PRINCIPAL_OFFSET_PX * size / 224
    radius_px = rng.uniform(*HAND_FILL) * room
    depth = K[0, 0] * np.linalg.norm(root_relative[:21], axis=1).max() / radius_px
    depth = max(depth, MIN_DEPTH_M - root_relative[:21, 2].min())
    uv = project(root_relative[:21] + [0.0, 0.0, depth], K)
    lowest, highest = margin - uv.min(0), size - 1 - margin - uv.max(0)        # (2,) shifts the room allows
    centred = (size - 1) / 2 - (uv.min(0) + uv.max(0)) / 2 + rng.normal(0.0, CENTRE_JITTER * size, 2)
    shift_px = np.clip(centred, lowest, np.maximum(lowest, highest))
    for _ in range(50):   # perspective makes near joints move further than the root: shrink until all fit
        offset = np.array([*(shift_px * depth / K[0, 0]), depth])
        placed = np.round(root_relative + offset, 6)
        uv = project(placed[:21], K)
        if uv.min() >= margin and uv.max() <= size - 1 - margin:
            return placed
        shift_px, depth = shift_px * 0.7, depth * 1.05
    raise RuntimeError("could not fit the hand in the image")   # unreachable for the constants above


# --- Rendering ------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _pixel_grid(size):
    """(size, size, 2) float32 pixel centres (u, v), integer-centred like geometry's convention."""
    v, u = np.mgrid[0:size, 0:size].astype(np.float32)
    return np.stack([u, v], -1)


def _draw_capsule(zbuf, normals, uv, depth, radius_m, radius_px):
    """Z-buffer one tapered capsule between two projected ends: uv (2, 2), depth, radius_m, radius_px (2,).

    Screen-space capsule: a pixel within the interpolated radius of the segment is covered; its depth bulges
    towards the camera like a cylinder's, and its normal (camera frame) follows the bulge.
    """
    size = zbuf.shape[0]
    lo = np.clip(np.floor(uv.min(0) - radius_px.max()), 0, size - 1).astype(int)
    hi = np.clip(np.ceil(uv.max(0) + radius_px.max()) + 1, 0, size).astype(int)
    pixels = _pixel_grid(size)[lo[1]:hi[1], lo[0]:hi[0]]                       # (h, w, 2)
    axis = uv[1] - uv[0]
    t = np.clip((pixels - uv[0]) @ axis / max(float(axis @ axis), 1e-6), 0.0, 1.0)   # (h, w) along the axis
    offset = pixels - (uv[0] + t[..., None] * axis)                             # (h, w, 2) from the axis
    radius = radius_px[0] + t * (radius_px[1] - radius_px[0])
    across2 = (offset ** 2).sum(-1) / radius ** 2                               # (h, w) squared, 1 at the rim
    bulge = np.sqrt(np.clip(1.0 - across2, 0.0, 1.0))
    z = depth[0] + t * (depth[1] - depth[0]) - bulge * (radius_m[0] + t * (radius_m[1] - radius_m[0]))
    region = zbuf[lo[1]:hi[1], lo[0]:hi[0]]
    nearer = (across2 < 1.0) & (z < region)
    region[nearer] = z[nearer]
    normals[lo[1]:hi[1], lo[0]:hi[0]][nearer] = np.concatenate(
        [offset / radius[..., None], -bulge[..., None]], -1)[nearer]


def _draw_palm(zbuf, normals, palm, K):
    """Z-buffer the palm polygon (P, 3), camera frame, flat in the plane of its radial wrist corner, index MCP
    and pinky MCP."""
    size = zbuf.shape[0]
    outline = Image.new("L", (size, size))
    ImageDraw.Draw(outline).polygon([tuple(p) for p in project(palm, K).tolist()], fill=1)
    inside = np.asarray(outline, bool)
    plane_normal = np.cross(palm[2] - palm[0], palm[5] - palm[0])
    plane_normal = plane_normal / np.linalg.norm(plane_normal) * -np.sign(plane_normal @ palm[0])  # to camera
    rays = np.linalg.solve(K, np.concatenate([_pixel_grid(size)[inside].T, np.ones((1, inside.sum()))]))
    z = np.clip((plane_normal @ palm[0]) / (plane_normal @ rays), palm[:, 2].min(), palm[:, 2].max())
    nearer = z < zbuf[inside]
    rows, cols = np.nonzero(inside)
    zbuf[rows[nearer], cols[nearer]] = z[nearer]
    normals[rows[nearer], cols[nearer]] = plane_normal


def render_hand(joints, palm, radii, K, size):
    """Joints (21, 3), palm (7, 3), radii (21,) in the camera frame -> depth (S, S), inf off the hand, and
    unit normals (S, S, 3) in the camera frame."""
    zbuf = np.full((size, size), np.inf, np.float32)
    normals = np.zeros((size, size, 3), np.float32)
    forearm = joints[0] + (joints[0] - joints[9]) / np.linalg.norm(joints[0] - joints[9]) * WRIST_STUB_M
    points = np.concatenate([joints, forearm[None]])                           # (22, 3)
    point_radii = np.append(radii, radii[0] * 1.05)
    uv = project(points, K).astype(np.float32)
    radius_px = K[0, 0] * point_radii / points[:, 2]
    for bone in [*BONES, (0, 21)]:
        bone = list(bone)
        _draw_capsule(zbuf, normals, uv[bone], points[bone, 2], point_radii[bone], radius_px[bone])
    _draw_palm(zbuf, normals, palm, K)
    return zbuf, normals


def shade_hand(normals, volar, rng):
    """Unit normals (N, 3) of hand pixels -> colours (N, 3) float32: Lambert shading of a random skin tone
    whose surfaces facing along ``volar`` (3,), the palm side, are tinted like a palm."""
    skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] + rng.normal(0.0, 8.0, 3).astype(np.float32)
    palm_tone = skin + 0.3 * (PALM_TINT - skin)
    light = np.array([*rng.uniform(-1.0, 1.0, 2), -rng.uniform(0.3, 1.5)], np.float32)   # towards the light
    ambient = np.float32(rng.uniform(0.25, 0.5))
    lambert = np.clip(normals @ (light / np.linalg.norm(light)), 0.0, 1.0)
    palmness = np.clip(normals @ volar.astype(np.float32) * 2.0, 0.0, 1.0)[:, None]
    colour = skin + palmness * (palm_tone - skin)
    return colour * (ambient + (1.0 - ambient) * lambert)[:, None]


def random_background(rng, size):
    """(S, S, 3) float32: a two-colour gradient blended with soft blotches (a coarse random grid, resized)."""
    cells = int(rng.integers(2, 8))
    angle = rng.uniform(0, 2 * np.pi)
    ramp = _pixel_grid(cells) @ np.array([np.cos(angle), np.sin(angle)], np.float32)
    ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())                    # (cells, cells) in [0, 1]
    low, high = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    gradient = low + ramp[..., None] * (high - low)
    blotches = rng.uniform(0, 255, (cells, cells, 3)).astype(np.float32)
    image = gradient + rng.uniform(0.0, 0.3) * (blotches - gradient)
    canvas = Image.fromarray(image.astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    return np.array(canvas, np.float32)   # writable


def paint(zbuf, normals, volar, rng):
    """One picture of a rendered hand: a random background, skin tone and light, maybe noise and defocus.
    zbuf (S, S), normals (S, S, 3) from render_hand; volar (3,) the palm normal -> rgb (S, S, 3) uint8."""
    hand = np.isfinite(zbuf)
    image = random_background(rng, zbuf.shape[0])
    image[hand] = shade_hand(normals[hand], volar, rng)
    if rng.uniform() < 0.5:
        image += rng.standard_normal(image.shape, np.float32) * np.float32(rng.uniform(1.0, 6.0))   # sensor noise
    rgb = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
    if rng.uniform() < 0.3:
        rgb = rgb.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))   # slight defocus
    return np.asarray(rgb)


def make_sample(rng, size, versions=1):
    """One hand: rgbs (V, S, S, 3) uint8 (the same hand painted ``versions`` times, like FreiHAND's image
    versions), mask (S, S) uint8 (255 = hand), K (3, 3), xyz (21, 3) metres."""
    joints, palm, radii = sample_hand(rng)
    rotation = sample_view(rng)
    K = sample_camera(rng, size)
    points = np.concatenate([joints, palm]) - joints[ROOT_JOINT]
    placed = place_hand(points @ rotation.T, K, size, rng)
    xyz, palm = placed[:21], placed[21:]
    zbuf, normals = render_hand(xyz, palm, radii, K, size)
    rgbs = np.stack([paint(zbuf, normals, rotation[:, 2], rng) for _ in range(versions)])
    return rgbs, np.isfinite(zbuf).astype(np.uint8) * 255, K, xyz


# --- Writing the layout ------------------------------------------------------------------------------------

def _write_sample(task):
    """Worker: render hand (split, index) into ``root``, its version v as image v * count + index (FreiHAND's
    numbering). Returns (split, index, K (3, 3), xyz (21, 3), images written)."""
    root, split, index, count, versions, seed, size = task
    rng = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_IDS[split], index]))
    rgbs, mask, K, xyz = make_sample(rng, size, versions)
    for version, rgb in enumerate(rgbs):
        Image.fromarray(rgb).save(root / split / "rgb" / f"{version * count + index:08d}.jpg", quality=JPEG_QUALITY)
    if split == "training":
        Image.fromarray(mask).save(root / split / "mask" / f"{index:08d}.jpg", quality=JPEG_QUALITY)
    return split, index, K, xyz, len(rgbs)


def _write_json(path, value):
    path.write_text(json_text(value, separators=(",", ":")))


def settings(n_train, n_eval, seed, size, versions):
    """What a set made by this generator with these arguments records in SETTINGS_FILE."""
    return {"generator": GENERATOR_VERSION, "n_train": n_train, "n_eval": n_eval, "seed": seed, "size": size,
            "versions": versions}


def read_settings(root):
    """The SETTINGS_FILE of a generated set, or None (a set of an older generator, or not one of ours)."""
    path = Path(root) / SETTINGS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def generate(out_dir, n_train, n_eval, seed=0, size=224, workers=None, versions=1):
    """Write n_train training hands (``versions`` images each) and n_eval evaluation hands (one image each) in
    the FreiHAND v2 layout into ``out_dir``.

    The result depends only on (seed, size, versions), not on ``workers`` (default: all CPUs). The files are written to
    a hidden sibling folder that is renamed into place at the end, so an interrupted run leaves no out_dir.
    """
    if n_train < 0 or n_eval < 0:
        raise UserError(f"sample counts must be >= 0, got --train {n_train} --eval {n_eval}")
    if size < 64:
        raise UserError(f"--size {size} is too small: use at least 64 pixels")
    if seed < 0:
        raise UserError(f"--seed {seed}: use a seed >= 0")
    if versions < 1:
        raise UserError(f"--versions {versions}: use at least 1 image per training hand")
    if workers is not None and workers < 1:
        raise UserError(f"--workers {workers}: use at least 1")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not an empty folder: choose another --out or delete it")
    with atomic_write(out) as partial:   # a hidden sibling folder, renamed into place when complete
        _fill(partial, n_train, n_eval, seed, size, versions, workers)
    return out


def _fill(partial, n_train, n_eval, seed, size, versions, workers):
    """Write the whole set into the folder ``partial``: images by worker processes as they are drawn (none is
    kept in memory), labels gathered into arrays, a progress bar over the images."""
    counts = {"training": (n_train, versions), "evaluation": (n_eval, 1)}
    tasks = ((partial, split, i, n, v, seed, size) for split, (n, v) in counts.items() for i in range(n))
    workers = min(workers or usable_cores(), max(1, (n_train + n_eval) // 8))
    for folder in ("training/rgb", "training/mask", "evaluation/rgb"):
        (partial / folder).mkdir(parents=True)
    labels = {split: (np.empty((n, 3, 3)), np.empty((n, 21, 3))) for split, (n, _) in counts.items()}
    with contextlib.ExitStack() as stack:
        if workers == 1:
            results = map(_write_sample, tasks)
        else:
            pool = stack.enter_context(fork_pool(workers))
            results = pool.imap_unordered(_write_sample, tasks, chunksize=8)
        bar = stack.enter_context(progress(desc="generating", total=n_train * versions + n_eval, unit="img"))
        for split, index, K, xyz, images in results:
            labels[split][0][index], labels[split][1][index] = K, xyz
            bar.update(images)
    for split, (K, xyz) in labels.items():
        _write_json(partial / f"{split}_K.json", K.tolist())
        _write_json(partial / f"{split}_xyz.json", xyz.tolist())
        _write_json(partial / f"{split}_scale.json", np.round(bone_length(xyz, SCALE_BONE), 8).tolist())
    _write_json(partial / SETTINGS_FILE, settings(n_train, n_eval, seed, size, versions))


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description="Write procedural synthetic right hands in the FreiHAND v2 "
                                                 "layout.")
    parser.add_argument("--out", required=True, help="folder to create (must not exist, or be empty)")
    parser.add_argument("--train", type=int, required=True, help="number of training hands")
    parser.add_argument("--eval", type=int, required=True, help="number of evaluation hands")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--versions", type=int, default=1,
                        help="images of each training hand, over other backgrounds and colours (FreiHAND has 4)")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all CPUs)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    out = generate(args.out, args.train, args.eval, args.seed, args.size, args.workers, args.versions)
    seconds = time.perf_counter() - start
    count = args.train * args.versions + args.eval
    versions = f" x {args.versions} versions" if args.versions > 1 else ""
    print(f"wrote {args.train} training{versions} + {args.eval} evaluation hands ({args.size} px) to {out} "
          f"in {seconds:.2f} s: {count / seconds:.1f} images/s")


if __name__ == "__main__":
    main()
