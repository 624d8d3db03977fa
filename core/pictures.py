"""Pictures of hands: the one skeleton drawing and its colours (one per finger, the wrist white), used by the
augmentation preview, the training log's TensorBoard panel and ``--viz``; and ``save_pictures``: each image with its
predicted (solid) and true (dashed) skeleton beside the root-relative 3D hand (predict.py and ensemble.py)."""
from pathlib import Path

import numpy as np
from PIL import ImageDraw

from core import geometry
from core.geometry import BONES
from core.picture_files import open_as_shown

FINGER_COLOURS = [(255, 70, 70), (255, 200, 0), (70, 220, 70), (0, 190, 255), (210, 100, 255)]  # thumb .. pinky
WRIST_COLOUR = (255, 255, 255)
DASH_PX = (3.0, 2.0)   # a dashed line: drawn, then skipped, in pixels at scale 1


def joint_colour(joint):
    """RGB 0-255 of a joint, and of the bone that ends at it: its finger's; the wrist white."""
    return WRIST_COLOUR if joint == 0 else FINGER_COLOURS[(joint - 1) // 4]


def dashes(start, end, scale=1.0):
    """The pieces [(a, b), ...] of the segment ``start``-``end`` (pixels) that a dashed line draws."""
    on, off = DASH_PX[0] * scale, DASH_PX[1] * scale
    length = float(np.linalg.norm(end - start))
    direction = (end - start) / max(length, 1e-9)
    return [(start + direction * s, start + direction * min(s + on, length)) for s in np.arange(0.0, length, on + off)]


def draw_skeleton(draw, uv, visible=None, dashed=False, scale=1.0, offset=(0.0, 0.0)):
    """One hand's bones and joints on a PIL ``ImageDraw``: ``uv`` (21, 2) pixels (plus ``offset``), ``visible``
    (21,) the joints to draw (default all; a bone needs both ends), ``dashed`` bones for ground truth, line width
    and dot size times ``scale``; colours: ``joint_colour``."""
    points = np.asarray(uv, np.float64) + np.asarray(offset, np.float64)
    visible = np.ones(len(points), bool) if visible is None else np.asarray(visible, bool)
    width, radius = max(1, round(scale)), 1.5 * scale
    for parent, child in BONES:
        if visible[parent] and visible[child]:
            pieces = dashes(points[parent], points[child], scale) if dashed else [(points[parent], points[child])]
            for start, end in pieces:
                draw.line([tuple(start), tuple(end)], fill=joint_colour(child), width=width)
    for joint in np.flatnonzero(visible):
        x, y = points[joint]
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=joint_colour(joint))


def draw_skeleton_3d(ax, xyz_mm, style):
    """Camera-frame joints drawn on a matplotlib 3D axis with x right, depth into the page and -y up (the camera's
    view turned), in the colours of ``draw_skeleton``."""
    for parent, child in BONES:
        ax.plot(xyz_mm[[parent, child], 0], xyz_mm[[parent, child], 2], -xyz_mm[[parent, child], 1], style,
                color=np.array(joint_colour(child)) / 255.0, lw=1.5, ms=2.5)


def image_with_skeletons(path, poses, K):
    """The RGB image at ``path`` with each pose {dashed: xyz (21, 3) metres} drawn through the camera ``K``."""
    canvas = open_as_shown(path)[0]   # full scale: the skeletons are drawn in the picture's own pixels
    draw, scale = ImageDraw.Draw(canvas), max(1.0, max(canvas.size) / 224.0)
    for dashed, joints in poses.items():
        draw_skeleton(draw, geometry.project(joints, K), dashed=dashed, scale=scale)
    return canvas


def save_pictures(prefix, split, xyz, count):
    """``count`` PNGs PREFIX_viz/NNNN.png (NNNN the image id), evenly spread over the split: the image with the
    predicted 2D skeleton (solid; ground truth dashed where known) beside a 3D view of the root-relative hand.
    ``xyz`` (N, 21, 3) metres, rows as the split's. Returns the folder."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(f"{prefix}_viz")
    folder.mkdir(parents=True, exist_ok=True)
    for row in np.unique(np.linspace(0, len(split) - 1, min(count, len(split))).round().astype(int)):
        poses = {False: xyz[row]} if split.xyz is None else {True: split.xyz[row], False: xyz[row]}
        fig = plt.figure(figsize=(9, 4.5))
        ax_image, ax_3d = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2, projection="3d")
        ax_image.imshow(image_with_skeletons(split.image_paths[row], poses, split.K[row]))
        for dashed, joints in poses.items():
            draw_skeleton_3d(ax_3d, (joints - joints[geometry.ROOT_JOINT]) * 1000.0, "--" if dashed else "-o")
        ax_image.set_axis_off()
        name = (Path(split.image_paths[row]).name if split.layout == "images"
                else f"{split.name} image {split.image_ids[row]}")
        ax_image.set_title(f"{name}: prediction solid"
                           + (", ground truth dashed" if split.xyz is not None else ""), fontsize=9)
        ax_3d.set_title("root-relative, mm", fontsize=9)
        ax_3d.set(xlabel="x", ylabel="z (depth)", zlabel="-y", xlim=(-110, 110), ylim=(-110, 110), zlim=(-110, 110))
        ax_3d.set_box_aspect((1, 1, 1))
        ax_3d.view_init(elev=20, azim=-70)
        fig.tight_layout()
        fig.savefig(folder / f"{split.image_ids[row]:04d}.png", dpi=80)
        plt.close(fig)
    return folder
