"""Schneider 2020: EfficientNet encoder + 1D-heatmap decoder (after I2L-MeshNet's lixel heatmaps).

The encoder is segmentation-models-pytorch's ``efficientnet-b4`` / ``-b0`` (the lukemelas implementation the
paper used). The decoder reads its deepest feature map (448 channels at stride 32 for b4, 320 for b0; with
``encoder_depth`` 4 the stride-16 map, and the encoder stops there); with ``skips`` (off in the paper) the
shallower maps are added too, one after each block of the xy branch. The decoder has two branches, xy and z, each
N transposed-convolution blocks doubling the resolution (the first dense, the others depthwise-separable), C
channels, BN + ReLU: 7 -> 112 at 224 px, 4 -> 64 at 128 px. The xy
map is averaged over rows (x profile) and over columns (y profile), the z map over rows; Conv1d(k=1) turns
each profile into 21 heatmaps of length L, and a soft-argmax over each gives u, v in input pixels and d in
[-1, 1].

Inputs are square, a multiple of the encoder's stride on a side (then the heatmaps span the input exactly).

``head`` 'unet' or 'fpn' (ours) replaces the 1D-heatmap decoder by the shared ``models.heads.PoseHead``: the
encoder's multi-scale features decoded by smp's U-Net or FPN decoder to stride-4 2D heatmaps, the soft-argmax
read-out and the lifting depth head.
"""
import segmentation_models_pytorch as smp
import torch
from torch import nn

from core.geometry import NUM_JOINTS
from models.heads import DECODERS, PoseHead
from models.heatmaps import soft_argmax_1d
from models.pretrained import build_backbone
from models.registry import register_model


def upsample_block(in_channels, out_channels, separable):
    """ConvTranspose2d(k3, s2, p1, output_padding 1) doubling H and W, then BN + ReLU.

    separable: a depthwise transposed convolution followed by a pointwise 1x1 convolution.
    """
    if separable:
        conv = [nn.ConvTranspose2d(in_channels, in_channels, 3, stride=2, padding=1, output_padding=1,
                                   groups=in_channels, bias=False),
                nn.Conv2d(in_channels, out_channels, 1, bias=False)]
    else:
        conv = [nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1, bias=False)]
    return nn.Sequential(*conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def upsampler(in_channels, channels, num_blocks):
    """(B, in_channels, h, w) -> (B, channels, h * 2^N, w * 2^N): one dense block, then separable ones."""
    blocks = [upsample_block(in_channels, channels, separable=False)]
    blocks += [upsample_block(channels, channels, separable=True) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


Z_READOUTS = ("columns", "pooled")


class HeatmapDecoder1D(nn.Module):
    """Deepest encoder features (B, in_channels, h, h) -> per-axis heatmap logits (B, J, 3, h * 2^N).

    ``z_readout`` 'columns' (the paper): the z block averaged over rows, so depth bin i is read from image
    column i by a translation-equivariant stack, which must learn depth from border effects alone.
    'pooled' (I2L-MeshNet's z read-out): the z block averaged over both axes, then a linear map to
    ``depth_bins`` logits per joint, resampled to L bins, so every depth bin has weights of its own.
    ``skip_channels`` (UNet-style skips, off in the paper): after each xy block, a 1x1 projection of the encoder
    feature map of the same resolution is added (channels of those maps, deepest first).
    """

    def __init__(self, in_channels, channels=128, num_blocks=4, num_joints=NUM_JOINTS, z_readout="columns",
                 depth_bins=64, skip_channels=()):
        super().__init__()
        if z_readout not in Z_READOUTS:
            raise ValueError(f"z_readout={z_readout!r}: choose one of {', '.join(Z_READOUTS)}")
        self.z_readout, self.num_joints, self.depth_bins = z_readout, num_joints, depth_bins
        self.xy_branch = upsampler(in_channels, channels, num_blocks)
        self.skips = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in skip_channels[:num_blocks])
        self.z_branch = upsampler(in_channels, channels, num_blocks)
        self.to_x = nn.Conv1d(channels, num_joints, 1)
        self.to_y = nn.Conv1d(channels, num_joints, 1)
        self.to_z = (nn.Conv1d(channels, num_joints, 1) if z_readout == "columns"
                     else nn.Linear(channels, num_joints * depth_bins))

    def forward(self, features, skip_features=()):
        """features: (B, in_channels, h, h); skip_features: the encoder maps at 2h, 4h, ... (deepest first)."""
        xy = features
        for i, block in enumerate(self.xy_branch):
            xy = block(xy)  # (B, C, h * 2^(i+1), ...)
            if i < len(self.skips):
                xy = xy + self.skips[i](skip_features[i])
        z = self.z_branch(features)    # (B, C, L, L)
        x_logits = self.to_x(xy.mean(2))  # mean over rows -> (B, C, L) along u -> (B, J, L)
        y_logits = self.to_y(xy.mean(3))  # mean over columns, along v
        if self.z_readout == "columns":
            z_logits = self.to_z(z.mean(2))
        else:
            z_logits = self.to_z(z.mean((2, 3))).view(-1, self.num_joints, self.depth_bins)  # (B, J, depth_bins)
            z_logits = nn.functional.interpolate(z_logits, size=x_logits.shape[-1], mode="linear")  # (B, J, L)
        return torch.stack([x_logits, y_logits, z_logits], 2)  # (B, J, 3, L)


HEADS = ("1d", *DECODERS)
HEAD_1D_OPTIONS = ("channels", "num_blocks", "z_readout", "depth_bins", "skips")  # what only the 1D decoder reads


class EffNet1D(nn.Module):
    def __init__(self, arch, encoder_name, pretrained="none", channels=128, num_blocks=4, drop_connect=0.2,
                 z_readout="columns", depth_bins=64, encoder_depth=5, skips=False, head="1d", decoder_width=64):
        super().__init__()
        if encoder_depth not in (4, 5):
            raise ValueError(f"encoder_depth={encoder_depth}: 5 (stride 32, the paper) or 4 (stride 16)")
        if head not in HEADS:
            raise ValueError(f"head={head!r}: choose one of {', '.join(HEADS)}")
        self.head_kind = head

        def build(imagenet):
            return smp.encoders.get_encoder(encoder_name, weights="imagenet" if imagenet else None,
                                            depth=encoder_depth)

        self.encoder = build_backbone(arch, pretrained, build, prefix="encoder")
        # smp keeps EfficientNet's 1x1 head conv + BN (0.81 M for b4), which the paper's parameter count
        # evidently includes, but the forward never uses it (nor, at encoder_depth 4, the blocks after the
        # stride-16 output, which ``encode`` does not run): frozen, so they need no gradient (and DDP none).
        self.last_block = self.encoder._out_indexes[encoder_depth - 2]
        for layer in (self.encoder._conv_head, self.encoder._bn1, *self.encoder._blocks[self.last_block + 1:]):
            layer.requires_grad_(False)
        # The TensorFlow port keeps BN running statistics with momentum 0.01; with PyTorch's 0.1 they follow the
        # weights within tens of steps instead of hundreds, so evaluation-mode predictions of a short or
        # from-scratch run are not thrown off by stale statistics (fine-tuning is unaffected either way).
        for layer in self.encoder.modules():
            if isinstance(layer, nn.BatchNorm2d):
                layer.momentum = 0.1
        self.encoder._drop_connect_rate = float(drop_connect)  # stochastic depth: block i of n drops at rate * i / n
        if head != "1d":
            self.head = PoseHead(self.encoder.out_channels, head, decoder_width)
            return
        skip_channels = self.encoder.out_channels[-2:0:-1] if skips else ()  # stride 16 (or 8) ... 2
        self.decoder = HeatmapDecoder1D(self.encoder.out_channels[-1], channels, num_blocks, z_readout=z_readout,
                                        depth_bins=depth_bins, skip_channels=skip_channels)

    def encode(self, x):
        """smp's encoder forward, stopping after the last block whose output is used: [x, stride 2, 4, ...]."""
        encoder, image = self.encoder, x
        x = encoder._swish(encoder._bn0(encoder._conv_stem(x)))
        features = [image, x]
        for i, block in enumerate(encoder._blocks[:self.last_block + 1]):
            x = block(x, encoder._drop_connect_rate * i / len(encoder._blocks))
            if i in encoder._out_indexes:
                features.append(x)
        return features

    def forward(self, x, return_aux=False):
        features = self.encode(x)  # [x, stride 2, 4, ...]; the last (B, 448, S/32, S/32) for b4 at depth 5
        if self.head_kind != "1d":
            uvd, heatmaps = self.head(features)  # (B, J, 3), (B, J, S/4, S/4)
            return (uvd, {"heatmaps2d": [heatmaps]}) if return_aux else uvd
        height, width = x.shape[-2:]
        if height != width:
            raise ValueError(f"the 1D-heatmap decoder needs square inputs, got {height}x{width}")
        logits = self.decoder(features[-1], features[-2:0:-1])  # (B, J, 3, L)
        uvd, probs = soft_argmax_1d(logits, width)
        return (uvd, {"heatmaps1d": probs, "logits1d": logits}) if return_aux else uvd


# The options only some heads read: the 1D decoder's, and the shared head's width.
HEAD_OPTIONS = {**{key: ("1d",) for key in HEAD_1D_OPTIONS}, "decoder_width": DECODERS}


@register_model("effb4_1d", paper="schneider2020", head_options=HEAD_OPTIONS, default_head="1d",
                summary="EfficientNet-B4 encoder + separable 1D-heatmap decoder, soft-argmax (19.5M in the paper)")
def effb4_1d(pretrained="none", **options):
    """options: channels, num_blocks, drop_connect, z_readout, depth_bins, encoder_depth, skips, head,
    decoder_width (EffNet1D)."""
    return EffNet1D("effb4_1d", "efficientnet-b4", pretrained, **options)


@register_model("effb0_1d", paper="schneider2020", head_options=HEAD_OPTIONS, default_head="1d",
                summary="EfficientNet-B0 encoder + separable 1D-heatmap decoder, soft-argmax (5.4M in the paper)")
def effb0_1d(pretrained="none", **options):
    """options: as effb4_1d."""
    return EffNet1D("effb0_1d", "efficientnet-b0", pretrained, **options)
