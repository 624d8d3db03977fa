"""``ghost_lite`` (Liu 2022): a compact network of Ghost modules, attention fusion and separable self-attention.

Encoder: a stride-2 stem and lighter stacked hourglasses whose blocks are Ghost bottlenecks (GhostNet: a
primary 1x1 conv makes m intrinsic maps, a cheap depthwise 3x3 conv makes the ghost maps from them).

Head on the encoder features (B, C, h, w): one 1x1 conv gives Att with 2J + D channels,
* com1 (J): spatial softmax -> C2D_j, the 2D heatmaps; (u, v) = soft-argmax (integral) of C2D_j;
* com2 (J): a second attention map per joint;
* com3 (D): a dense depth-feature map.
The fused attention softmax(beta_j * com1_j + (1 - beta_j) * com2_j), with a learned beta per joint, pools
com3 into one D-vector per joint, H_j (B, J, D). A separable self-attention (MobileViTv2) then runs over the
J joint vectors, and one linear layer shared by all joints maps each to its depth d_j.

Where the self-attention sits: the paper's text orders it after the pooling and before the shared linear
layer ("Then, the linear self-attention is applied ... Finally, a weight-sharing linear layer"), so it runs
over the 21 per-joint vectors. That is also where it is needed: d is root-relative, and a linear layer
shared by joints that each see only their own pooled vector cannot know where the root is; the context vector
of the attention carries hand-wide information to every joint. It adds a residual around it, with a
LayerNorm in front as in MobileViTv2's pre-norm blocks.
"""
from functools import partial

import torch
from timm.models.ghostnet import GhostBottleneck
from timm.models.mobilevit import LinearSelfAttention
from torch import nn

from core.geometry import NUM_JOINTS
from models.heatmaps import soft_argmax_2d, spatial_softmax
from models.heads import HeatmapLifting
from models.hourglass import Hourglass, conv_bn_relu, load_weights
from models.registry import register_model


def ghost_block(in_channels, out_channels, expansion=2):
    """Ghost bottleneck (B, in, H, W) -> (B, out, H, W): two Ghost modules around a 2x-wide middle."""
    return GhostBottleneck(in_channels, expansion * out_channels, out_channels)


class SeparableSelfAttention(nn.Module):
    """Separable self-attention of linear complexity over tokens (B, N, D) -> (B, N, D) (seed eq. 11).

    Context scores c_s = softmax over the N tokens of x W_I (one score per token), context vector
    c_v = sum_i c_s(i) x_i W_K (a D-vector), y = (c_v * ReLU(x W_V)) W_O. Cost and memory grow linearly
    with N: no N x N matrix is formed. Wraps timm's ``LinearSelfAttention``, which takes (B, D, P, N)
    channel-first tensors; here P = 1.
    """

    def __init__(self, dim):
        super().__init__()
        self.attention = LinearSelfAttention(dim)

    def forward(self, tokens):
        x = tokens.transpose(1, 2).unsqueeze(2)          # (B, D, 1, N)
        return self.attention(x).squeeze(2).transpose(1, 2)  # (B, N, D)


class GhostEncoder(nn.Module):
    """RGB (B, 3, S, S) -> features (B, C, S/2, S/2): stem conv, a Ghost bottleneck to C channels, then
    ``num_stacks`` hourglasses of Ghost bottlenecks, each followed by a Ghost bottleneck and a 1x1 conv-BN-ReLU
    (which keeps the scale of the features from growing through the hourglass sums) and added to its input."""

    def __init__(self, channels, num_stacks, hourglass_depth, stem_channels=16):
        super().__init__()
        self.stem = nn.Sequential(
            conv_bn_relu(3, stem_channels, kernel_size=3, stride=2),
            ghost_block(stem_channels, channels),
        )
        make_block = partial(ghost_block, channels, channels)
        self.stacks = nn.ModuleList(
            nn.Sequential(Hourglass(hourglass_depth, make_block), make_block(), conv_bn_relu(channels, channels))
            for _ in range(num_stacks))

    def forward(self, x):
        x = self.stem(x)
        for stack in self.stacks:
            x = x + stack(x)
        return x


GHOST_HEADS = ("attention", "lifting")


class GhostLite(nn.Module):
    """Liu 2022 on RGB; see the module docstring. ``model(x)`` -> (B, J, 3) uvd. ``head`` 'lifting' (ours): a 1x1
    conv to J heatmaps read by the shared ``models.heads.HeatmapLifting`` instead of the paper's attention head."""

    def __init__(self, channels=48, num_stacks=2, hourglass_depth=4, depth_dim=64, head="attention",
                 num_joints=NUM_JOINTS):
        super().__init__()
        if head not in GHOST_HEADS:
            raise ValueError(f"head={head!r}: choose one of {', '.join(GHOST_HEADS)}")
        self.num_joints, self.depth_dim, self.head = num_joints, depth_dim, head
        self.encoder = GhostEncoder(channels, num_stacks, hourglass_depth)
        if head == "lifting":
            self.to_heatmaps = nn.Conv2d(channels, num_joints, 1)
            self.lifting = HeatmapLifting(channels, num_joints=num_joints)
            return
        self.att_head = nn.Conv2d(channels, 2 * num_joints + depth_dim, 1)  # Att: com1, com2, com3
        self.beta = nn.Parameter(torch.full((num_joints,), 0.5))             # per-joint fusion weight
        self.joint_norm = nn.LayerNorm(depth_dim)
        self.joint_attention = SeparableSelfAttention(depth_dim)
        self.depth_out = nn.Linear(depth_dim, 1)                              # shared by all joints

    def forward(self, x, return_aux=False):
        feats = self.encoder(x)                                               # (B, C, h, w)
        if self.head == "lifting":
            heatmaps = self.to_heatmaps(feats)                                # (B, J, h, w)
            uvd = self.lifting(heatmaps, feats, x.shape[-2:])
            return (uvd, {"heatmaps2d": [heatmaps]}) if return_aux else uvd
        com1, com2, com3 = self.att_head(feats).split(
            [self.num_joints, self.num_joints, self.depth_dim], dim=1)        # (B, J, h, w) x2, (B, D, h, w)
        heatmaps = spatial_softmax(com1)                                      # C2D, (B, J, h, w)
        uv = soft_argmax_2d(heatmaps, x.shape[-2:])                           # (B, J, 2) input pixels
        beta = self.beta.view(1, -1, 1, 1)
        fused = spatial_softmax(beta * com1 + (1 - beta) * com2)              # (B, J, h, w)
        joint_feats = torch.einsum("bjhw,bdhw->bjd", fused, com3)             # H_j, (B, J, D)
        joint_feats = joint_feats + self.joint_attention(self.joint_norm(joint_feats))
        d = self.depth_out(joint_feats)                                       # (B, J, 1)
        uvd = torch.cat([uv, d], -1)
        return (uvd, {"heatmaps2d": [heatmaps]}) if return_aux else uvd


@register_model("ghost_lite", paper="liu2022",
                summary="Ghost-module hourglass, fused per-joint attention (learned beta), soft-argmax 2D + "
                        "separable self-attention depth (0.18M params, as in the paper)")
def build_ghost_lite(pretrained="none", channels=48, num_stacks=2, hourglass_depth=4, depth_dim=64, head="attention"):
    model = GhostLite(channels, num_stacks, hourglass_depth, depth_dim, head)
    return load_weights(model, pretrained, "ghost_lite")
