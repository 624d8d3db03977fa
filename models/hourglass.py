"""Stacked-hourglass families: ``hourglass_attn`` (Liu 2018) and ``hg_mlp`` (He 2021).

Both share one residual block, one stem, one recursive hourglass and one stack of hourglasses with a
heatmap head after each stack (intermediate supervision, Newell et al. 2016). They differ in how 3D joints
come out:

* ``hourglass_attn``: u, v by a soft-argmax read-out of the last stack's heatmaps; depth per joint from the
  shallow (stem) features weighted by that joint's normalised heatmap (the paper's spatial attention,
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

from core.common import UserError
from core.geometry import NUM_JOINTS, denormalize_uvd
from models.heads import HeatmapLifting, LiftingHead, attention_pool, check_readout, read_out
from models.heatmaps import soft_argmax_2d
from models.pretrained import load_local_weights
from models.registry import register_model


# --- weights -----------------------------------------------------------------------------------------------

def load_weights(model, pretrained, arch):
    """Apply ``pretrained`` to a whole model: 'none' keeps the random init; a path loads a state dict or a
    project checkpoint (``models.pretrained``). These families train from scratch: no ImageNet weights."""
    pretrained = os.fspath(pretrained)
    if pretrained == "imagenet":
        raise UserError(f"{arch}: no ImageNet weights exist for this arch (its paper trains from scratch); "
                        f"use --pretrained none or a local weights file")
    if pretrained != "none":
        load_local_weights(model, pretrained, arch, prefix="")
    return model


# --- building blocks -----------------------------------------------------------------------------------

def residual_block(in_channels, out_channels, se=False):
    """Residual block of two 3x3 conv layers (+ one SE block when ``se``): (B, in, H, W) -> (B, out, H, W).

    The SE-ResNet basic block of Liu 2018 (squeeze ratio 1/16); a 1x1 projection on the shortcut when the
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
            raise ValueError(f"stem_stride={stride}: 2 (the papers) or 4")
        pool = [nn.MaxPool2d(3, stride=2, padding=1)] if stride == 4 else []
        self.layers = nn.Sequential(
            conv_bn_relu(3, channels // 2, kernel_size=7, stride=2),
            *pool,
            residual_block(channels // 2, channels, se=se),
            residual_block(channels, channels, se=se),
        )

    def forward(self, x):
        return self.layers(x)

    def forward_both(self, x):
        """(the first conv's stride-2 features (B, C/2, S/2, S/2), the stem's output (B, C, S/s, S/s))."""
        fine = self.layers[0](x)
        return fine, self.layers[1:](fine)


class FineHeatmaps(nn.Module):
    """Heatmaps at stride 2 (ours): the last stack's features (B, C, h, w), mapped to C/2 channels by a 1x1 conv
    and upsampled, added to the stem's stride-2 features (B, C/2, 2h, 2w), then a 3x3 conv block and a 1x1 conv
    to J maps (B, J, 2h, 2w): a U-Net's last step, so the 2D read-out has twice the bins for the cost of one 3x3
    conv at half the channels."""

    def __init__(self, channels, num_joints=NUM_JOINTS):
        super().__init__()
        half = channels // 2
        self.lateral = nn.Conv2d(channels, half, 1)
        self.block = conv_bn_relu(half, half, 3)
        self.head = nn.Conv2d(half, num_joints, 1)

    def forward(self, feats, fine):
        up = F.interpolate(self.lateral(feats), size=fine.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(self.block(fine + up))


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


# --- Liu 2018: hourglass + spatial attention on shallow features ---------------------------------------

class AttentionDepth(nn.Module):
    """The paper's depth: a small network shared by all joints over [the joint's pooled vector, the mean of all
    joints' vectors]; uv (B, J, 2) passes through, (B, J, C) -> d (B, J, 1)."""

    def __init__(self, channels):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * channels, channels), nn.ReLU(inplace=True), nn.Linear(channels, 1))

    def forward(self, uv, pooled):
        context = pooled.mean(1, keepdim=True).expand_as(pooled)       # (B, J, C)
        return uv, self.net(torch.cat([pooled, context], -1))


class HourglassAttention(nn.Module):
    """Liu 2018 on RGB: SE residual blocks, 2 stacked hourglasses for 2D heatmaps, depth from heatmap-weighted
    shallow features.

    Read-out of u, v: ``models.heads.read_out`` of the last heatmaps (the peak-normalised sharpening, or with
    ``readout`` 'softmax' (ours) the plain spatial softmax) gives M_j, and u, v its soft-argmax. The same M_j
    is the spatial attention on the shallow features: per joint, F_reg = M_j * F_raw summed over space is a
    C-vector. ``depth_head`` 'attention' (the paper): a small network shared by all joints turns [that vector,
    the mean of all joints' vectors] into d (the hand-wide mean gives every joint the reference it needs for a
    root-relative depth);
    'lifting' (ours): ``LiftingHead``, whose last hidden layer drops units with chance ``lifting_dropout`` in
    training and whose input pose gets Gaussian noise of ``lifting_noise`` hand radii in training.
    ``stem_stride`` 4 (ours) runs the hourglasses at a quarter of the input, four times cheaper than the paper's
    half; ``fine_heatmaps`` (ours, with ``stem_stride`` 4) then reads u, v from ``FineHeatmaps`` at half the
    input, appended to the supervised heatmaps, and pools the depth features with its attention summed over
    2x2 bins.
    """

    def __init__(self, channels=128, num_stacks=2, hourglass_depth=4, readout_sharpness=15.0,
                 depth_source="shallow", stem_stride=2, depth_head="attention", readout="peak",
                 refine_uv=False, lifting_dropout=0.0, lifting_noise=0.0, fine_heatmaps=False,
                 num_joints=NUM_JOINTS):
        super().__init__()
        check_readout(readout)  # a bad read-out name fails when the model is built
        self.readout = readout
        if depth_source not in ("shallow", "final"):
            raise UserError(f"hourglass_attn: depth_source={depth_source!r}; choose 'shallow' or 'final'")
        if depth_head not in ("attention", "lifting"):
            raise ValueError(f"depth_head={depth_head!r}: choose 'attention' or 'lifting'")
        if refine_uv and depth_head != "lifting":
            raise ValueError("refine_uv=True: only depth_head='lifting' refines the 2D read-out")
        for name, value in (("lifting_dropout", lifting_dropout), ("lifting_noise", lifting_noise)):
            if value and depth_head != "lifting":
                raise ValueError(f"{name}={value}: only depth_head='lifting' has the lifting network")
        if fine_heatmaps and stem_stride != 4:
            raise ValueError(f"fine_heatmaps=True needs stem_stride=4 (its heatmaps are already at half the input "
                             f"with stem_stride={stem_stride})")
        if not 0.0 <= lifting_dropout < 1.0:
            raise ValueError(f"lifting_dropout={lifting_dropout}: a chance in [0, 1)")
        if lifting_noise < 0:
            raise ValueError(f"lifting_noise={lifting_noise}: a standard deviation, 0 or more")
        self.depth_source = depth_source
        self.readout_sharpness = readout_sharpness
        self.stem = Stem(channels, se=True, stride=stem_stride)
        self.stacks = StackedHourglass(channels, num_stacks, hourglass_depth, se=True, num_joints=num_joints)
        self.fine_heatmaps = FineHeatmaps(channels, num_joints) if fine_heatmaps else None
        self.depth_head = (AttentionDepth(channels) if depth_head == "attention" else
                           LiftingHead(channels, refine_uv, dropout=lifting_dropout, noise=lifting_noise))

    def forward(self, x, return_aux=False):
        fine, shallow = self.stem.forward_both(x)                      # (B, C/2, S/2, S/2), (B, C, S/s, S/s)
        feats, heatmaps = self.stacks(shallow)                         # heatmaps: list of (B, J, S/s, S/s)
        if self.fine_heatmaps is not None:
            heatmaps = [*heatmaps, self.fine_heatmaps(feats, fine)]    # the last (B, J, S/2, S/2)
        attention = read_out(heatmaps[-1], self.readout, self.readout_sharpness)  # M_j, (B, J, h, w)
        uv = soft_argmax_2d(attention, x.shape[-2:])                   # (B, J, 2)
        source = shallow if self.depth_source == "shallow" else feats
        if self.fine_heatmaps is not None:  # each 2x2 bins' sum: (B, J, S/2, S/2) -> (B, J, S/4, S/4), still sums to 1
            attention = 4 * F.avg_pool2d(attention, 2)
        pooled = attention_pool(attention, source)                     # sum over space of M_j * F, (B, J, C)
        uv, d = self.depth_head(uv, pooled)                            # (B, J, 2), (B, J, 1)
        uvd = torch.cat([uv, d], -1)
        return (uvd, {"heatmaps2d": heatmaps}) if return_aux else uvd


@register_model("hourglass_attn", paper="liu2018",
                summary="SE-ResNet 2-stack hourglass (128 ch, 64x64): 2D heatmaps + depth from heatmap-weighted "
                        "shallow features")
def build_hourglass_attn(pretrained="none", channels=128, num_stacks=2, hourglass_depth=4, readout_sharpness=15.0,
                         depth_source="shallow", stem_stride=2, depth_head="attention", readout="peak",
                         refine_uv=False, lifting_dropout=0.0, lifting_noise=0.0, fine_heatmaps=False):
    model = HourglassAttention(channels, num_stacks, hourglass_depth, readout_sharpness, depth_source, stem_stride,
                               depth_head, readout, refine_uv, lifting_dropout, lifting_noise, fine_heatmaps)
    return load_weights(model, pretrained, "hourglass_attn")


# --- He 2021: hourglass -> residual net -> latent -> MLP ------------------------------------------------

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


HG_MLP_HEADS = ("mlp", "lifting")


class HourglassMLP(nn.Module):
    """He 2021: 2-stack hourglass -> heatmaps -> residual net over heatmaps + features -> latent -> MLP ->
    63 values read as normalised uvd (``geometry.normalize_uvd`` space) and mapped back to input pixels.
    ``head`` 'lifting' (ours): the shared ``models.heads.HeatmapLifting`` over the last stack's heatmaps and
    features instead of the latent and the MLP; ``stem_stride`` 4 (ours) runs the hourglasses at a quarter."""

    def __init__(self, channels=128, num_stacks=2, hourglass_depth=4, mlp_dims=(1024, 256), dropout=0.3,
                 head="mlp", stem_stride=2, num_joints=NUM_JOINTS):
        super().__init__()
        if head not in HG_MLP_HEADS:
            raise ValueError(f"head={head!r}: choose one of {', '.join(HG_MLP_HEADS)}")
        self.num_joints, self.head = num_joints, head
        self.stem = Stem(channels, se=False, stride=stem_stride)
        self.stacks = StackedHourglass(channels, num_stacks, hourglass_depth, se=False, num_joints=num_joints)
        if head == "mlp":
            self.encoder = LatentEncoder(channels, num_joints=num_joints)
            self.mlp = mlp_with_bn_dropout((self.encoder.out_dim, *mlp_dims, 3 * num_joints), dropout)
        else:
            self.lifting = HeatmapLifting(channels, num_joints=num_joints)

    def forward(self, x, return_aux=False):
        feats, heatmaps = self.stacks(self.stem(x))                # (B, C, h, w), list of (B, J, h, w)
        if self.head == "lifting":
            uvd = self.lifting(heatmaps[-1], feats, x.shape[-2:])  # (B, J, 3)
        else:
            latent = self.encoder(heatmaps[-1], feats)             # (B, 16 C)
            nuvd = self.mlp(latent).view(-1, self.num_joints, 3)   # (B, J, 3) normalised uvd
            uvd = denormalize_uvd(nuvd, x.shape[-1])
        return (uvd, {"heatmaps2d": heatmaps}) if return_aux else uvd


@register_model("hg_mlp", paper="he2021",
                summary="2-stack hourglass heatmaps -> residual net -> latent -> MLP (BN + dropout) -> normalised uvd")
def build_hg_mlp(pretrained="none", channels=128, num_stacks=2, hourglass_depth=4, mlp_dims=(1024, 256),
                 dropout=0.3, head="mlp", stem_stride=2):
    model = HourglassMLP(channels, num_stacks, hourglass_depth, tuple(mlp_dims), dropout, head, stem_stride)
    return load_weights(model, pretrained, "hg_mlp")
