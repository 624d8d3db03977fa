"""Stacked-hourglass families: ``hourglass_attn`` (seed 003) and ``hg_mlp`` (seed 004).

Both share one residual block, one stem, one recursive hourglass and one stack of hourglasses with a
heatmap head after each stack (intermediate supervision, Newell et al. 2016). They differ in how 3D joints
come out:

* ``hourglass_attn``: u, v by a soft-argmax read-out of the last stack's heatmaps; depth per joint from the
  shallow (stem) features weighted by that joint's normalised heatmap (the seed's spatial attention,
  F_reg = M_j * F_raw), pooled and fed to a small regression network shared by all joints.
* ``hg_mlp``: a residual network over heatmaps + features -> a latent vector -> an MLP (BatchNorm + dropout
  before every layer but the last) -> 63 values, the normalised uvd of ``geometry.normalize_uvd``.

The hourglass, its blocks and the weight loader are also used by ``models.ghost``.
"""
import os
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import SqueezeExcite
from timm.models.resnet import BasicBlock
from torch import nn

from common import UserError
from geometry import NUM_JOINTS, ROOT_JOINT, denormalize_uvd
from models.heatmaps import soft_argmax_2d, spatial_softmax
from models.pretrained import load_local_weights
from models.registry import register_model


# --- weights -----------------------------------------------------------------------------------------------

def load_weights(model, pretrained, arch):
    """Apply ``pretrained`` to a whole model: 'none' keeps the random init; a path loads a state dict or a
    project checkpoint (``models.pretrained``). These families train from scratch: no ImageNet weights."""
    pretrained = os.fspath(pretrained)
    if pretrained == "imagenet":
        raise UserError(f"{arch}: no ImageNet weights exist for this arch (its seed trains from scratch); "
                        f"use --pretrained none or a local weights file")
    if pretrained != "none":
        load_local_weights(model, pretrained, arch, prefix="")
    return model


# --- building blocks -----------------------------------------------------------------------------------

def residual_block(in_channels, out_channels, se=False):
    """Residual block of two 3x3 conv layers (+ one SE block when ``se``): (B, in, H, W) -> (B, out, H, W).

    The SE-ResNet basic block of seed 003 (squeeze ratio 1/16); a 1x1 projection on the shortcut when the
    width changes.
    """
    shortcut = None
    if in_channels != out_channels:
        shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
    return BasicBlock(in_channels, out_channels, downsample=shortcut, attn_layer=SqueezeExcite if se else None)


def conv_bn_relu(in_channels, out_channels, kernel_size=1, stride=1):
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class Hourglass(nn.Module):
    """Recursive hourglass (B, C, H, W) -> (B, C, H, W): at each of ``depth`` levels a skip block at the
    current scale plus (max-pool, block, inner hourglass or block, block, nearest upsample).

    ``make_block()`` returns a fresh channel-preserving block, so other families can fill it with their own
    blocks (``models.ghost`` uses Ghost bottlenecks).
    """

    def __init__(self, depth, make_block):
        super().__init__()
        self.skip = make_block()
        self.down = make_block()
        self.inner = Hourglass(depth - 1, make_block) if depth > 1 else make_block()
        self.up = make_block()

    def forward(self, x):
        low = self.up(self.inner(self.down(F.max_pool2d(x, 2))))
        return self.skip(x) + F.interpolate(low, size=x.shape[-2:], mode="nearest")


class Stem(nn.Module):
    """RGB (B, 3, S, S) -> shallow features (B, C, S/stride, S/stride): a 7x7 stride-2 conv (then a 3x3 stride-2
    max-pool when ``stride`` is 4, as in ResNet's stem) and two residual blocks."""

    def __init__(self, channels, se, stride=2):
        super().__init__()
        if stride not in (2, 4):
            raise ValueError(f"stem_stride={stride}: 2 (the seeds) or 4")
        pool = [nn.MaxPool2d(3, stride=2, padding=1)] if stride == 4 else []
        self.layers = nn.Sequential(
            conv_bn_relu(3, channels // 2, kernel_size=7, stride=2),
            *pool,
            residual_block(channels // 2, channels, se=se),
            residual_block(channels, channels, se=se),
        )

    def forward(self, x):
        return self.layers(x)


class StackedHourglass(nn.Module):
    """``num_stacks`` hourglasses, each followed by a heatmap head (intermediate supervision).

    (B, C, h, w) -> (features (B, C, h, w) of the last stack, [heatmaps (B, J, h, w) per stack]). Between
    stacks the features and the heatmaps are mapped back to C channels and added to the stack's input.
    """

    def __init__(self, channels, num_stacks, depth, se, num_joints=NUM_JOINTS):
        super().__init__()
        make_block = partial(residual_block, channels, channels, se=se)
        self.hourglasses = nn.ModuleList(Hourglass(depth, make_block) for _ in range(num_stacks))
        self.features = nn.ModuleList(
            nn.Sequential(make_block(), conv_bn_relu(channels, channels)) for _ in range(num_stacks))
        self.heads = nn.ModuleList(nn.Conv2d(channels, num_joints, 1) for _ in range(num_stacks))
        self.remap_features = nn.ModuleList(nn.Conv2d(channels, channels, 1) for _ in range(num_stacks - 1))
        self.remap_heatmaps = nn.ModuleList(nn.Conv2d(num_joints, channels, 1) for _ in range(num_stacks - 1))

    def forward(self, x):
        heatmaps = []
        for stack, (hourglass, features, head) in enumerate(zip(self.hourglasses, self.features, self.heads)):
            feats = features(hourglass(x))
            heatmaps.append(head(feats))
            if stack < len(self.remap_features):
                x = x + self.remap_features[stack](feats) + self.remap_heatmaps[stack](heatmaps[-1])
        return feats, heatmaps


# --- seed 003: hourglass + spatial attention on shallow features ---------------------------------------

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


def rotate_2d(points, cos, sin):
    """Points (B, J, 2) turned by the angle with these cosines and sines (B,)."""
    x, y = points[..., 0], points[..., 1]
    c, s = cos[:, None], sin[:, None]
    return torch.stack([c * x - s * y, s * x + c * y], -1)


def from_canonical(canonical, uv, scale, turn, root=ROOT_JOINT):
    """Canonical 2D (B, J, 2) back to input pixels, in the frame ``canonical_frame`` took ``uv`` out of."""
    return uv[:, root:root + 1] + scale * rotate_2d(canonical, -turn[:, 1], turn[:, 0])


class LiftingHead(nn.Module):
    """Depth from the whole hand (Martinez et al. 2017's lifting network, given image evidence): an MLP over the
    canonical 2D pose (``canonical_frame`` of the read-out, detached), which carries the foreshortening of every
    bone, and each joint's heatmap-pooled features reduced to ``feature_dim`` values, which carry the shading
    that tells towards from away, returns the depth d of every joint; with ``refine_uv`` also a correction of
    the canonical 2D pose (a read-out that misplaces a hidden fingertip pulled towards a hand that fits the rest:
    measured no better, README). (B, J, 2) + (B, J, C) -> uv (B, J, 2), d (B, J, 1)."""

    def __init__(self, channels, refine_uv=False, num_joints=NUM_JOINTS, feature_dim=16, hidden=512):
        super().__init__()
        self.refine_uv = refine_uv
        self.reduce = nn.Linear(channels, feature_dim)
        self.mlp = nn.Sequential(
            nn.Linear(num_joints * (2 + feature_dim), hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_joints * (3 if refine_uv else 1)))

    def forward(self, uv, pooled):
        uv = uv.detach()
        pose, scale, turn = canonical_frame(uv)                                     # (B, J, 2)
        x = torch.cat([pose, self.reduce(pooled)], -1).flatten(1)                   # (B, J * (2 + feature_dim))
        if not self.refine_uv:
            return uv, self.mlp(x).unsqueeze(-1)                                    # (B, J, 1)
        out = self.mlp(x).view(len(x), -1, 3)                                       # (B, J, 3)
        return from_canonical(pose + out[..., :2], uv, scale, turn), out[..., 2:]


class AttentionDepth(nn.Module):
    """The seed's depth: a small network shared by all joints over [the joint's pooled vector, the mean of all
    joints' vectors]; uv (B, J, 2) passes through, (B, J, C) -> d (B, J, 1)."""

    def __init__(self, channels):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * channels, channels), nn.ReLU(inplace=True), nn.Linear(channels, 1))

    def forward(self, uv, pooled):
        context = pooled.mean(1, keepdim=True).expand_as(pooled)       # (B, J, C)
        return uv, self.net(torch.cat([pooled, context], -1))


class HourglassAttention(nn.Module):
    """Seed 003 on RGB: SE residual blocks, 2 stacked hourglasses for 2D heatmaps, depth from heatmap-weighted
    shallow features.

    Read-out of u, v: each of the last heatmaps H_j (trained towards Gaussians of peak 1) is divided by its
    own peak (at least MIN_PEAK) and normalised to M_j = softmax over space of (sharpness * H_j / peak_j);
    u, v = soft-argmax of M_j. With sharpness 15 the flat background (H ~ 0) weighs nothing against the peak
    and a Gaussian of sigma 2 bins keeps about 0.5 bin of width, so M_j is a sharp, nearly unbiased,
    differentiable argmax whatever the height of the peak. The same M_j is the spatial attention on the
    shallow features: per joint, F_reg = M_j * F_raw summed over space is a C-vector. ``depth_head``
    'attention' (the seed): a small network shared by all joints turns [that vector, the mean of all joints'
    vectors] into d (the hand-wide mean gives every joint the reference it needs for a root-relative depth);
    'lifting' (ours): ``LiftingHead``. ``stem_stride`` 4 (ours) runs the hourglasses at a quarter of the
    input, four times cheaper than the seed's half. ``readout`` 'softmax' (ours): M_j = the plain spatial softmax
    of H_j (integral regression), instead of the peak-normalised sharpening.
    """

    MIN_PEAK = 0.1  # below this a map holds no peak worth sharpening

    def __init__(self, channels=128, num_stacks=2, hourglass_depth=4, readout_sharpness=15.0,
                 depth_source="shallow", stem_stride=2, depth_head="attention", readout="peak",
                 refine_uv=False, num_joints=NUM_JOINTS):
        super().__init__()
        if readout not in ("peak", "softmax"):
            raise ValueError(f"readout={readout!r}: choose 'peak' or 'softmax'")
        self.readout = readout
        if depth_source not in ("shallow", "final"):
            raise UserError(f"hourglass_attn: depth_source={depth_source!r}; choose 'shallow' or 'final'")
        if depth_head not in ("attention", "lifting"):
            raise ValueError(f"depth_head={depth_head!r}: choose 'attention' or 'lifting'")
        if refine_uv and depth_head != "lifting":
            raise ValueError("refine_uv=True: only depth_head='lifting' refines the 2D read-out")
        self.depth_source = depth_source
        self.readout_sharpness = readout_sharpness
        self.stem = Stem(channels, se=True, stride=stem_stride)
        self.stacks = StackedHourglass(channels, num_stacks, hourglass_depth, se=True, num_joints=num_joints)
        self.depth_head = (LiftingHead(channels, refine_uv) if depth_head == "lifting"
                           else AttentionDepth(channels))

    def normalise(self, heatmaps):
        """Heatmaps (B, J, h, w) -> M (B, J, h, w), each map summing to 1: softmax of sharpness * H_j / peak_j."""
        if self.readout == "softmax":
            return spatial_softmax(heatmaps)
        peak = heatmaps.amax((-2, -1), keepdim=True).clamp(min=self.MIN_PEAK)
        return spatial_softmax(self.readout_sharpness * heatmaps / peak)

    def forward(self, x, return_aux=False):
        shallow = self.stem(x)                                         # (B, C, S/s, S/s)
        feats, heatmaps = self.stacks(shallow)                         # heatmaps: list of (B, J, S/s, S/s)
        attention = self.normalise(heatmaps[-1])                       # M_j, (B, J, h, w)
        uv = soft_argmax_2d(attention, x.shape[-2:])                   # (B, J, 2)
        source = shallow if self.depth_source == "shallow" else feats
        pooled = torch.einsum("bjhw,bchw->bjc", attention, source)     # sum over space of M_j * F, (B, J, C)
        uv, d = self.depth_head(uv, pooled)                            # (B, J, 2), (B, J, 1)
        uvd = torch.cat([uv, d], -1)
        return (uvd, {"heatmaps2d": heatmaps}) if return_aux else uvd


@register_model("hourglass_attn", seed="003",
                summary="SE-ResNet 2-stack hourglass (128 ch, 64x64): 2D heatmaps + depth from heatmap-weighted "
                        "shallow features")
def build_hourglass_attn(pretrained="none", channels=128, num_stacks=2, hourglass_depth=4, readout_sharpness=15.0,
                         depth_source="shallow", stem_stride=2, depth_head="attention", readout="peak",
                         refine_uv=False):
    model = HourglassAttention(channels, num_stacks, hourglass_depth, readout_sharpness, depth_source, stem_stride,
                               depth_head, readout, refine_uv)
    return load_weights(model, pretrained, "hourglass_attn")


# --- seed 004: hourglass -> residual net -> latent -> MLP ------------------------------------------------

class LatentEncoder(nn.Module):
    """Heatmaps (B, J, h, w) + features (B, C, h, w) -> latent (B, C * 16).

    Both inputs are mapped to C channels by 1x1 convs and summed, then ``num_downsamples`` x (residual block,
    2x2 max-pool); a final adaptive pool to 4x4 keeps the latent size fixed whatever the input size.
    """

    def __init__(self, channels, num_downsamples=4, num_joints=NUM_JOINTS):
        super().__init__()
        self.from_heatmaps = nn.Conv2d(num_joints, channels, 1)
        self.from_features = nn.Conv2d(channels, channels, 1)
        self.blocks = nn.Sequential(*(
            nn.Sequential(residual_block(channels, channels), nn.MaxPool2d(2)) for _ in range(num_downsamples)))
        self.out_dim = channels * 16

    def forward(self, heatmaps, feats):
        x = self.from_heatmaps(heatmaps) + self.from_features(feats)
        x = F.adaptive_avg_pool2d(self.blocks(x), 4)  # (B, C, 4, 4)
        return x.flatten(1)


def mlp_with_bn_dropout(dims, dropout):
    """Linear layers dims[0] -> ... -> dims[-1]; BatchNorm, ReLU and dropout before each of them."""
    layers = []
    for in_dim, out_dim in zip(dims[:-1], dims[1:]):
        layers += [nn.BatchNorm1d(in_dim), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(in_dim, out_dim)]
    return nn.Sequential(*layers)


class HourglassMLP(nn.Module):
    """Seed 004: 2-stack hourglass -> heatmaps -> residual net over heatmaps + features -> latent -> MLP ->
    63 values read as normalised uvd (``geometry.normalize_uvd`` space) and mapped back to input pixels."""

    def __init__(self, channels=128, num_stacks=2, hourglass_depth=4, mlp_dims=(1024, 256), dropout=0.3,
                 num_joints=NUM_JOINTS):
        super().__init__()
        self.num_joints = num_joints
        self.stem = Stem(channels, se=False)
        self.stacks = StackedHourglass(channels, num_stacks, hourglass_depth, se=False, num_joints=num_joints)
        self.encoder = LatentEncoder(channels, num_joints=num_joints)
        self.mlp = mlp_with_bn_dropout((self.encoder.out_dim, *mlp_dims, 3 * num_joints), dropout)

    def forward(self, x, return_aux=False):
        feats, heatmaps = self.stacks(self.stem(x))            # (B, C, h, w), list of (B, J, h, w)
        latent = self.encoder(heatmaps[-1], feats)             # (B, 16 C)
        nuvd = self.mlp(latent).view(-1, self.num_joints, 3)   # (B, J, 3) normalised uvd
        uvd = denormalize_uvd(nuvd, x.shape[-1])
        return (uvd, {"heatmaps2d": heatmaps}) if return_aux else uvd


@register_model("hg_mlp", seed="004",
                summary="2-stack hourglass heatmaps -> residual net -> latent -> MLP (BN + dropout) -> normalised uvd")
def build_hg_mlp(pretrained="none", channels=128, num_stacks=2, hourglass_depth=4, mlp_dims=(1024, 256),
                 dropout=0.3):
    model = HourglassMLP(channels, num_stacks, hourglass_depth, tuple(mlp_dims), dropout)
    return load_weights(model, pretrained, "hg_mlp")
