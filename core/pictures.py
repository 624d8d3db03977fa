"""Pictures of predictions: each image with its predicted (solid) and true (dashed) skeleton, and the
root-relative 3D hand beside it. Used by predict.py and ensemble.py (``--viz K``)."""
from pathlib import Path

import numpy as np

from core import geometry
from augment import FINGER_COLOURS
from data.joints import BONES

# --- pictures -----------------------------------------------------------------------------------------------

def bone_colour(child):
    """Matplotlib colour of the bone ending at joint ``child``: one per finger (augment's preview colours)."""
    return np.array(FINGER_COLOURS[(child - 1) // 4]) / 255.0


def draw_skeleton_2d(ax, uv, style):
    for parent, child in BONES:
        ax.plot(*uv[[parent, child]].T, style, color=bone_colour(child), lw=1.5, ms=2.5)


def draw_skeleton_3d(ax, xyz_mm, style):
    """Camera-frame joints drawn with x right, depth into the page and -y up (the camera's view turned)."""
    for parent, child in BONES:
        ax.plot(xyz_mm[[parent, child], 0], xyz_mm[[parent, child], 2], -xyz_mm[[parent, child], 1], style,
                color=bone_colour(child), lw=1.5, ms=2.5)


def save_pictures(prefix, split, xyz, count):
    """``count`` PNGs PREFIX_viz/NNNN.png (NNNN the image id), evenly spread over the split: the image with the
    predicted 2D skeleton (solid; ground truth dashed where known) beside a 3D view of the root-relative hand.
    ``xyz`` (N, 21, 3) metres, rows as the split's. Returns the folder."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    folder = Path(f"{prefix}_viz")
    folder.mkdir(parents=True, exist_ok=True)
    for row in np.unique(np.linspace(0, len(split) - 1, min(count, len(split))).round().astype(int)):
        poses = {"-o": xyz[row]} if split.xyz is None else {"-o": xyz[row], "--": split.xyz[row]}
        fig = plt.figure(figsize=(9, 4.5))
        ax_image, ax_3d = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2, projection="3d")
        with Image.open(split.image_paths[row]) as image:
            ax_image.imshow(image.convert("RGB"))
        for style, joints in poses.items():
            draw_skeleton_2d(ax_image, geometry.project(joints, split.K[row]), style)
            draw_skeleton_3d(ax_3d, (joints - joints[geometry.ROOT_JOINT]) * 1000.0, style)
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
