"""The pose head every family can use (a model option; each paper's own head stays its arch's default).

What made the CPU recipe learn the fingers (docs/recipes.md), as one module:

* ``PoseHead``: an encoder's multi-scale features decoded to stride-4 2D heatmaps by segmentation-models-pytorch's
  U-Net (or FPN) decoder, read out by ``HeatmapLifting``.
* ``HeatmapLifting``: heatmaps (B, J, h, w) and features (B, C, h, w) at one scale -> uvd (B, J, 3). u, v by the
  peak-normalised soft-argmax read-out (``read_out``); depth by ``LiftingHead``, an MLP over the hand's canonical
  2D pose and each joint's heatmap-pooled features. The hourglass families feed it their own heatmaps.

Training supervises the heatmaps (``aux['heatmaps2d']``, the ``heatmap2d`` loss term) beside u, v and d.
"""
import math

import torch
from kornia.geometry.conversions import axis_angle_to_rotation_matrix
from segmentation_models_pytorch.decoders.fpn.decoder import FPNDecoder
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder
from torch import nn

from core.geometry import NUM_JOINTS, ROOT_JOINT, uvd_to_xyz, xyz_to_uvd
from models.heatmaps import soft_argmax_2d, spatial_softmax

READOUTS = ("peak", "softmax")
DECODERS = ("unet", "fpn")
MIN_PEAK = 0.1  # below this a map holds no peak worth sharpening


# --- 2D read-out ------------------------------------------------------------------------------------------

def check_readout(readout):
    if readout not in READOUTS:
        raise ValueError(f"readout={readout!r}: choose one of {', '.join(READOUTS)}")


def read_out(heatmaps, readout="peak", sharpness=15.0):
    """Heatmaps (B, J, h, w) -> attention maps M (B, J, h, w), each summing to 1.

    'peak': each map H_j (trained towards Gaussians of peak 1) divided by its own peak (at least MIN_PEAK), then
    M_j = softmax over space of (sharpness * H_j / peak_j). With sharpness 15 the flat background weighs nothing
    against the peak and a Gaussian of sigma 2 bins keeps about 0.5 bin of width: a sharp, nearly unbiased,
    differentiable argmax whatever the height of the peak. 'softmax': the plain spatial softmax (integral
    regression). The soft-argmax of M_j gives u, v; M_j also pools the features of joint j.
    """
    check_readout(readout)
    if readout == "softmax":
        return spatial_softmax(heatmaps)
    peak = heatmaps.amax((-2, -1), keepdim=True).clamp(min=MIN_PEAK)
    return spatial_softmax(sharpness * heatmaps / peak)


def attention_pool(attention, features):
    """Per-joint features (B, J, C): the sum over space of M_j * F, for M (B, J, h, w) and F (B, C, h, w)."""
    return torch.einsum("bjhw,bchw->bjc", attention, features.to(attention.dtype))


# --- depth by lifting ---------------------------------------------------------------------------------------

def rotate_2d(points, cos, sin):
    """Points (B, J, 2) turned by the angle with these cosines and sines (B,)."""
    x, y = points[..., 0], points[..., 1]
    c, s = cos[:, None], sin[:, None]
    return torch.stack([c * x - s * y, s * x + c * y], -1)


def canonical_frame(uv, root=ROOT_JOINT, wrist=0):
    """2D joints (B, J, 2) -> (canonical (B, J, 2), scale (B, 1, 1), turn (B, 2)): the pose freed of its place,
    size and in-plane turn (root at the origin, unit RMS distance from it, the wrist straight below the root),
    which change neither its depths nor its shape. ``from_canonical`` undoes it."""
    rel = uv - uv[:, root:root + 1]
    scale = rel.pow(2).sum(-1).mean(-1).sqrt().clamp(min=1e-6)[:, None, None]
    rel = rel / scale
    up = -rel[:, wrist]                                             # (B, 2) wrist -> root
    turn = up / up.norm(dim=-1, keepdim=True).clamp(min=1e-6)       # (a, b) is turned onto (0, -1)
    return rotate_2d(rel, -turn[:, 1], -turn[:, 0]), scale, turn


def from_canonical(canonical, uv, scale, turn, root=ROOT_JOINT):
    """Canonical 2D (B, J, 2) back to input pixels, in the frame ``canonical_frame`` took ``uv`` out of."""
    return uv[:, root:root + 1] + scale * rotate_2d(canonical, -turn[:, 1], turn[:, 0])


class LiftingHead(nn.Module):
    """Depth from the whole hand (Martinez et al. 2017's lifting network, given image evidence): an MLP over the
    canonical 2D pose (``canonical_frame`` of the read-out, detached), which carries the foreshortening of every
    bone, and each joint's heatmap-pooled features reduced to ``feature_dim`` values, which carry the shading
    that tells towards from away, returns the depth d of every joint; with ``refine_uv`` also a correction of
    the canonical 2D pose (a read-out that misplaces a hidden fingertip pulled towards a hand that fits the rest;
    off by default: it did not help, docs/recipes.md). ``dropout``: the chance of dropping each unit of the last
    hidden layer in training (Martinez et al. drop half), against an MLP that learns the depths of the training
    poses by heart. ``noise``: the standard deviation, in units of the hand's RMS radius, of Gaussian noise added
    to the canonical pose the MLP reads in training, so that it learns depth from a read-out as rough as on
    unseen hands (Martinez et al. train their lifting on detections, not on the true 2D pose).
    (B, J, 2) + (B, J, C) -> uv (B, J, 2), d (B, J, 1)."""

    def __init__(self, channels, refine_uv=False, num_joints=NUM_JOINTS, feature_dim=16, hidden=512, dropout=0.0,
                 noise=0.0):
        super().__init__()
        self.refine_uv, self.noise = refine_uv, noise
        self.reduce = nn.Linear(channels, feature_dim)
        # LayerNorm before each ReLU keeps units alive: without it AdamW at the CPU recipes' lr left 93-100 % of
        # the second layer dead (in one run all of it, and depth never learned); Martinez et al. normalise too
        self.mlp = nn.Sequential(
            nn.Linear(num_joints * (2 + feature_dim), hidden), nn.LayerNorm(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.ReLU(inplace=True))
        self.drop = nn.Dropout(dropout)  # outside mlp, so that checkpoints keep their parameter names
        self.out = nn.Linear(hidden, num_joints * (3 if refine_uv else 1))

    def forward(self, uv, pooled):
        uv = uv.detach()
        pose, scale, turn = canonical_frame(uv)                                     # (B, J, 2)
        out = self._lift(pose, self.reduce(pooled.to(pose.dtype)))                  # (B, J * 1 or 3)
        if not self.refine_uv:
            return uv, out.unsqueeze(-1)                                            # (B, J, 1)
        out = out.view(len(out), -1, 3)                                             # (B, J, 3)
        return from_canonical(pose + out[..., :2], uv, scale, turn), out[..., 2:]

    def depth_without_image(self, uv):
        """The depth d (B, J, 1) of 2D poses uv (B, J, 2) read without image evidence (each joint's reduced
        features at their value for an all-zero input): for poses that no image shows (``tilted_views``)."""
        pose = canonical_frame(uv)[0]
        reduced = self.reduce.bias.to(pose.dtype).expand(*pose.shape[:2], -1)      # (B, J, feature_dim)
        out = self._lift(pose, reduced)
        return out.view(len(out), pose.shape[1], -1)[..., -1:]                       # d is each joint's last output

    def _lift(self, pose, reduced):
        """Canonical poses (B, J, 2) and reduced features (B, J, feature_dim) -> the MLP's output (B, J * k)."""
        seen = pose + self.noise * torch.randn_like(pose) if self.training and self.noise else pose
        return self.out(self.drop(self.mlp(torch.cat([seen, reduced], -1).flatten(1))))


def tilted_views(uvd, K, root_depth, views, tilt_sd_deg):
    """Each hand of a batch seen from ``views`` other directions: its camera-space joints turned about the root
    by a Gaussian angle (sd ``tilt_sd_deg``) about a random axis in the image plane, then projected through the
    same K. uvd (B, J, 3) model space, K (B, 3, 3), root depth (B,) metres -> uvd (B * views, J, 3)."""
    K = K.repeat_interleave(views, 0)
    xyz = uvd_to_xyz(uvd.repeat_interleave(views, 0), K, root_depth.repeat_interleave(views, 0))  # (N, J, 3)
    n = len(xyz)
    phi = 2 * math.pi * torch.rand(n, device=xyz.device, dtype=xyz.dtype)
    theta = math.radians(tilt_sd_deg) * torch.randn(n, device=xyz.device, dtype=xyz.dtype)
    axis = torch.stack([phi.cos(), phi.sin(), torch.zeros_like(phi)], -1)          # (N, 3) unit, in the image plane
    turn = axis_angle_to_rotation_matrix(theta[:, None] * axis)                     # (N, 3, 3)
    root = xyz[:, ROOT_JOINT:ROOT_JOINT + 1]
    return xyz_to_uvd(root + (xyz - root) @ turn.transpose(-1, -2), K)


class HeatmapLifting(nn.Module):
    """Heatmaps (B, J, h, w) + features (B, C, h, w) of an (H, W) input -> uvd (B, J, 3): u, v by ``read_out``
    and the soft-argmax, d by ``LiftingHead`` over the read-out and the attention-pooled features."""

    def __init__(self, channels, readout="peak", sharpness=15.0, refine_uv=False, num_joints=NUM_JOINTS):
        super().__init__()
        check_readout(readout)  # a bad read-out name fails when the model is built
        self.readout, self.sharpness = readout, sharpness
        self.lifting = LiftingHead(channels, refine_uv, num_joints)

    def forward(self, heatmaps, features, input_hw):
        attention = read_out(heatmaps, self.readout, self.sharpness)    # (B, J, h, w)
        uv = soft_argmax_2d(attention, input_hw)                         # (B, J, 2) input pixels
        uv, d = self.lifting(uv, attention_pool(attention, features))    # (B, J, 2), (B, J, 1)
        return torch.cat([uv, d], -1)


# --- the head for multi-scale encoders -----------------------------------------------------------------------

def build_decoder(encoder_channels, decoder, width):
    """smp's decoder from features [input, stride 2, 4, ..., 2^D] (channels ``encoder_channels``, D+1 entries)
    to one stride-4 map: (decoder module, its channels). U-Net: D - 2 blocks of 4w, 2w, w channels (the
    deepest first); FPN: pyramid of 2w channels merged into w (needs D = 5, as smp's FPN reads strides 4-32, and
    w a multiple of 32)."""
    depth = len(encoder_channels) - 1
    if decoder == "unet":
        if depth < 3:
            raise ValueError(f"decoder 'unet' needs features down to stride 8 or deeper, got {depth} levels")
        blocks = depth - 2
        channels = [width * 2 ** i for i in reversed(range(blocks))]
        return UnetDecoder(list(encoder_channels), channels, n_blocks=blocks), width
    if decoder == "fpn":
        if depth != 5:
            raise ValueError(f"decoder 'fpn' reads strides 4 to 32: it needs encoder_depth 5, got {depth}")
        if width % 32:
            raise ValueError(f"decoder_width={width}: decoder 'fpn' needs a multiple of 32 (its GroupNorm of 32)")
        return FPNDecoder(list(encoder_channels), 5, pyramid_channels=2 * width, segmentation_channels=width,
                          dropout=0.0), width
    raise ValueError(f"decoder={decoder!r}: choose one of {', '.join(DECODERS)}")


class PoseHead(nn.Module):
    """Multi-scale features [input, stride 2, 4, ...] of an (H, W) input -> uvd (B, J, 3), heatmaps (B, J, H/4, W/4).

    smp's U-Net or FPN decoder (``decoder``, ``width`` channels at stride 4) -> a 1x1 conv to J heatmaps ->
    ``HeatmapLifting`` over the heatmaps and the decoded features.
    """

    def __init__(self, encoder_channels, decoder="unet", width=64, readout="peak", num_joints=NUM_JOINTS):
        super().__init__()
        self.decoder, channels = build_decoder(encoder_channels, decoder, width)
        self.to_heatmaps = nn.Conv2d(channels, num_joints, 1)
        self.lifting = HeatmapLifting(channels, readout, num_joints=num_joints)

    def forward(self, features):
        input_hw = features[0].shape[-2:]
        decoded = self.decoder(features)                    # (B, width, H/4, W/4)
        heatmaps = self.to_heatmaps(decoded)                # (B, J, H/4, W/4)
        return self.lifting(heatmaps, decoded, input_hw), heatmaps
