"""The coordinate codec: every conversion between camera space, image pixels and model space lives here.

Spaces
------
* camera ``xyz``: metres, camera frame, FreiHAND joint order, shape (..., 21, 3).
* image ``uv``: pixel coordinates with pixel centres on integers (OpenCV / FreiHAND convention: the
  centre of the top-left pixel is (0, 0), its outer corner is (-0.5, -0.5)).
* model ``uvd``: u, v in pixels of the network input (same convention), d = (z - z_root) / DEPTH_RANGE_M,
  the root-relative depth scaled to about [-1, 1].
* normalised ``uvd``: u, v mapped so that the input's outer pixel edges sit at -1 and +1; d unchanged.
  Losses compare predictions in this space so that u, v and d weigh alike whatever the input size.

Every image-space transform (resize, crop, augmentation, TTA rotation) is one 2x3 affine ``A`` mapping
source pixels to destination pixels in the integer-centre convention. The camera matrix of the transformed
image is ``affine_to_3x3(A) @ K``; depth is unchanged. Functions accept numpy arrays or torch tensors and
return the same kind; leading batch dimensions broadcast.
"""
import math

import kornia
import numpy as np
import torch

from core.common import unit_float

NUM_JOINTS = 21
ROOT_JOINT = 9  # middle-finger MCP: central, so every root-relative depth of a hand stays well inside the range
DEPTH_RANGE_M = 0.15  # d = +-1 is +-0.15 m from the root (the I2L-MeshNet hand range)
SCALE_BONE = (9, 10)  # FreiHAND's *_scale.json holds the length of this bone (middle MCP -> PIP), metres
# The hand's skeleton in FreiHAND order. PARENTS[j]: the joint each bone of the kinematic tree starts from (the
# wrist has none).
FINGERS = {"thumb": [1, 2, 3, 4], "index": [5, 6, 7, 8], "middle": [9, 10, 11, 12],
           "ring": [13, 14, 15, 16], "pinky": [17, 18, 19, 20]}
PARENTS = np.array([-1, 0, 1, 2, 3, 0, 5, 6, 7, 0, 9, 10, 11, 0, 13, 14, 15, 0, 17, 18, 19])
BONES = np.array([(PARENTS[j], j) for j in range(1, 21)])  # (20, 2) parent -> child


def _xp(a):
    """The array module of ``a``: torch for tensors, numpy otherwise."""
    return torch if isinstance(a, torch.Tensor) else np


def _transpose(m):
    return m.transpose(-1, -2) if isinstance(m, torch.Tensor) else np.swapaxes(m, -1, -2)


# --- pinhole camera -----------------------------------------------------------------------------------

def project(xyz, K):
    """Camera points (..., J, 3) through K (..., 3, 3) to pixels (..., J, 2)."""
    uvw = xyz @ _transpose(K)
    return uvw[..., :2] / uvw[..., 2:3]


def unproject(uv, z, K):
    """Pixels (..., J, 2) at depths z (..., J) back to camera points (..., J, 3); K may be any invertible 3x3."""
    xp = _xp(uv)
    ones = xp.ones_like(uv[..., :1])
    rays = xp.concatenate([uv, ones], -1) @ _transpose(xp.linalg.inv(K))  # (..., J, 3), rays with w = 1
    rays = rays / rays[..., 2:3]
    return rays * z[..., None]


# --- affine maps between pixel grids -------------------------------------------------------------------

def affine_to_3x3(A):
    """(..., 2, 3) affine -> (..., 3, 3) homogeneous matrix."""
    xp = _xp(A)
    last = xp.zeros_like(A[..., :1, :])
    last[..., 0, 2] = 1
    return xp.concatenate([A, last], -2)


def compose_affine(A_second, A_first):
    """The affine that applies ``A_first`` then ``A_second``."""
    return (affine_to_3x3(A_second) @ affine_to_3x3(A_first))[..., :2, :]


def invert_affine(A):
    xp = _xp(A)
    return xp.linalg.inv(affine_to_3x3(A))[..., :2, :]


def apply_affine(A, uv):
    """Pixels (..., J, 2) through affines (..., 2, 3)."""
    return uv @ _transpose(A[..., :, :2]) + A[..., None, :, 2]


def transform_K(A, K):
    """Camera matrix of an image warped by A: (..., 3, 3)."""
    return affine_to_3x3(A) @ K


def crop_resize_affine(box, size):
    """Affine taking the square crop ``box`` = (x0, y0, side) of a source image to a size x size input.

    ``x0, y0`` is the crop's outer top-left corner in the source's pixel-edge coordinates (a whole image of
    width W is box (0, 0, W)); a pixel centre u maps to (u + 0.5 - x0) * size / side - 0.5, which is what an
    antialiased resize of that box (PIL's ``Image.resize(..., box=...)``) does to the pixels.
    """
    x0, y0, side = (float(b) for b in box)
    s = size / side
    return np.array([[s, 0.0, (0.5 - x0) * s - 0.5],
                     [0.0, s, (0.5 - y0) * s - 0.5]], dtype=np.float64)


def square_box(width, height):
    """The square box (x0, y0, side), whole pixels, centred on a width x height image and holding all of it."""
    side = max(width, height)
    return (-((side - width) // 2), -((side - height) // 2), side)


def rotation_affine(angle_deg, size, scale=1.0, translate=(0.0, 0.0)):
    """Batched similarity about the input's centre: rotate counter-clockwise on screen by ``angle_deg``
    (B,), scale by ``scale`` (B,), then shift by ``translate`` (B, 2) pixels. Returns (B, 2, 3) torch.

    On screen (v pointing down) counter-clockwise means u' = c + s*cos*(u-c) + s*sin*(v-c), the convention
    of ``kornia.geometry.transform.get_rotation_matrix2d``.
    """
    angle = torch.as_tensor(angle_deg, dtype=torch.float32)
    angle = angle.reshape(-1)
    scale = torch.as_tensor(scale, dtype=torch.float32, device=angle.device).expand_as(angle)
    translate = torch.as_tensor(translate, dtype=torch.float32, device=angle.device).expand(angle.shape[0], 2)
    rad = angle * (math.pi / 180.0)
    cos, sin = scale * torch.cos(rad), scale * torch.sin(rad)
    centre = (size - 1) / 2.0
    tx = centre - cos * centre - sin * centre + translate[:, 0]
    ty = centre + sin * centre - cos * centre + translate[:, 1]
    row_u = torch.stack([cos, sin, tx], -1)
    row_v = torch.stack([-sin, cos, ty], -1)
    return torch.stack([row_u, row_v], -2)


# --- model space -----------------------------------------------------------------------------------------

def xyz_to_uvd(xyz, K):
    """Camera joints (..., 21, 3) -> model space (..., 21, 3) for the image whose camera matrix is K."""
    xp = _xp(xyz)
    uv = project(xyz, K)
    d = (xyz[..., 2] - xyz[..., ROOT_JOINT:ROOT_JOINT + 1, 2]) / DEPTH_RANGE_M
    return xp.concatenate([uv, d[..., None]], -1)


def uvd_to_xyz(uvd, K, root_depth):
    """Model space (..., 21, 3) -> camera joints (..., 21, 3), given the root's depth (...,) in metres."""
    z = root_depth[..., None] + uvd[..., 2] * DEPTH_RANGE_M
    return unproject(uvd[..., :2], z, K)


# --- root depth from the known scale ------------------------------------------------------------------------

def pair_length_terms(uvd, K, pairs):
    """How the camera-space length of joint pairs grows with the unknown root depth Z (metres).

    With rays x_j = K^-1 [u_j, v_j, 1] (w = 1) and root-relative depths r_j = d_j * DEPTH_RANGE_M, the camera
    joints are X_j = (Z + r_j) x_j, so each pair (a, b) of ``pairs`` (P, 2) has |X_b - X_a|^2 = A Z^2 + B Z + C.
    Returns A, B, C, each (..., P). A is the pair's squared separation in the image (normalised by the focal
    length): zero for a pair seen along one viewing ray, whose length then says little about Z.
    """
    xp = _xp(uvd)
    a, b = [int(i) for i in np.asarray(pairs)[:, 0]], [int(i) for i in np.asarray(pairs)[:, 1]]
    ones = xp.ones_like(uvd[..., :1])
    rays = xp.concatenate([uvd[..., :2], ones], -1) @ _transpose(xp.linalg.inv(K))
    rays = rays / rays[..., 2:3]                                                       # (..., 21, 3)
    rel = uvd[..., 2:3] * DEPTH_RANGE_M                                                # (..., 21, 1) metres
    grows = rays[..., b, :] - rays[..., a, :]                                          # (..., P, 3) per metre of Z
    offset = rays[..., b, :] * rel[..., b, :] - rays[..., a, :] * rel[..., a, :]       # (..., P, 3) at Z = 0
    return (grows ** 2).sum(-1), 2.0 * (grows * offset).sum(-1), (offset ** 2).sum(-1)


def root_depth_from_bone(uvd, K, bone_length):
    """Absolute root depth (...,) in metres that gives SCALE_BONE the length ``bone_length`` (...,): one bone.

    Iqbal et al. 2018 (2.5D): |X_n - X_m| = L is the quadratic A Z^2 + B Z + C = L^2 of ``pair_length_terms``;
    we take its larger root. A negative discriminant (no depth reaches the length) is clamped to zero, which
    picks the depth where the bone comes closest to its length. Unstable when the bone is seen nearly along
    the viewing ray (A near 0): ``root_depth_from_bones`` uses every bone.
    """
    xp = _xp(uvd)
    A, B, C = (t[..., 0] for t in pair_length_terms(uvd, K, [SCALE_BONE]))
    disc = xp.clip(B * B - 4.0 * A * (C - bone_length ** 2), 0.0, None)
    return (-B + xp.sqrt(disc)) / (2.0 * A)


def _pair_lengths(terms, depth):
    """Pair lengths (N, P) at root depths (N,) and their derivatives in the depth (N, P)."""
    A, B, C = terms
    squared = A * depth[:, None] ** 2 + B * depth[:, None] + C
    length = np.sqrt(np.clip(squared, 1e-12, None))
    return length, np.where(squared > 1e-12, (A * depth[:, None] + 0.5 * B) / length, 0.0)


def root_depth_from_bones(uvd, K, pairs, lengths, weights, bracket, grid=64, steps=10):
    """Root depth (N,) in metres that gives every joint pair its expected length, and where it is undetermined.

    uvd (N, 21, 3), K (N, 3, 3), pairs (P, 2), lengths and weights (N, P), bracket = (low, high), scalars or (N,),
    metres; numpy. Minimises over Z in the bracket the weighted least squares of the pairs' lengths
        E(Z) = sum_p w_p (l_p(Z) - L_p)^2,  l_p(Z) = sqrt(A_p Z^2 + B_p Z + C_p)  (``pair_length_terms``).
    A pair seen along the viewing ray hardly changes length with Z (dl/dZ near 0), so it hardly moves the
    minimum, whatever depth its own length alone would give: the case that throws ``root_depth_from_bone``
    off weighs only by what it says. Solved on a log-spaced grid over the bracket, then Gauss-Newton steps
    inside it, kept where they lower E: exact when the lengths are. Returns (depth (N,), undetermined (N,) bool:
    every pair on one viewing ray at that depth, so no depth fits better than another).
    """
    terms = pair_length_terms(uvd, K, pairs)
    low, high = (np.broadcast_to(np.asarray(b, np.float64), lengths.shape[:1]) for b in bracket)

    def energy(depth):                                                                 # (N,)
        return (weights * (_pair_lengths(terms, depth)[0] - lengths) ** 2).sum(-1)

    candidates = low[:, None] * (high / low)[:, None] ** np.linspace(0.0, 1.0, grid)   # (N, G)
    energies = np.stack([energy(candidates[:, g]) for g in range(grid)], -1)          # (N, G)
    coarse = candidates[np.arange(len(low)), energies.argmin(-1)]
    depth = coarse
    for _ in range(steps):
        length, slope = _pair_lengths(terms, depth)
        curvature = (weights * slope ** 2).sum(-1)
        step = (weights * (length - lengths) * slope).sum(-1) / np.where(curvature > 0, curvature, 1.0)
        depth = np.clip(depth - step, low, high)
    depth = np.where(energy(depth) <= energy(coarse), depth, coarse)
    undetermined = (terms[0] * depth[:, None] ** 2).max(-1) < 1e-12                # no pair a micrometre across
    return depth, undetermined


def bone_length(xyz, bone=SCALE_BONE):
    """Length (...,) of the bone between two joints of (..., 21, 3)."""
    return (((xyz[..., bone[0], :] - xyz[..., bone[1], :]) ** 2).sum(-1)) ** 0.5


def normalize_uvd(uvd, size):
    """Model space -> normalised model space: u, v in [-1, 1] across the input's outer pixel edges."""
    xp = _xp(uvd)
    uv = (uvd[..., :2] + 0.5) * (2.0 / size) - 1.0
    return xp.concatenate([uv, uvd[..., 2:]], -1)


def denormalize_uvd(nuvd, size):
    xp = _xp(nuvd)
    uv = (nuvd[..., :2] + 1.0) * (size / 2.0) - 0.5
    return xp.concatenate([uv, nuvd[..., 2:]], -1)


def heatmap_bin_centres(num_bins, size, device=None):
    """Input-pixel coordinate (num_bins,) of each bin centre of a heatmap spanning a size-pixel input."""
    return (torch.arange(num_bins, dtype=torch.float32, device=device) + 0.5) * (size / num_bins) - 0.5


def depth_bin_centres(num_bins, device=None):
    """Normalised depth d (num_bins,) of each bin centre of a depth heatmap spanning d in [-1, 1]."""
    return (torch.arange(num_bins, dtype=torch.float32, device=device) + 0.5) * (2.0 / num_bins) - 1.0


def warp_images(images, affines, size=None, mode="bilinear"):
    """(B, C, H, W) images through (B, 2, 3) source->destination pixel affines -> (B, C, size, size) float.

    The one place images are warped (training augmentation, TTA). Integer pixel centres on both sides
    (align_corners=True), zeros outside the source. uint8 input is scaled to [0, 1].
    """
    images = unit_float(images)
    dsize = (images.shape[-2], images.shape[-1]) if size is None else (size, size)
    return kornia.geometry.transform.warp_affine(images, affines.to(images), dsize, mode=mode,
                                                 padding_mode="zeros", align_corners=True)
