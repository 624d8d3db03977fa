"""Reichardt 2021: direct regression of the 63 joint values from timm ResNets.

The network's 63 outputs are normalised uvd (``geometry.normalize_uvd``: u, v in [-1, 1] across the input,
d the model-space depth), mapped back to model space with the actual input size. Inputs are square.

``res50x2_res34`` is the paper's pipeline of three ResNets trained on one loss, each reducing the embedding
further, read literally: image -> ResNet50 -> 1024-d embedding seen as a (1, 32, 32) image -> ResNet50 ->
256-d embedding seen as (1, 16, 16) -> ResNet34 -> 63. Each net's stem BN normalises the embedding it reads.

``head`` 'unet' or 'fpn' (ours, ``resnet34`` and ``resnet101``) replaces the regression by the shared
``models.heads.PoseHead`` over the ResNet's features at strides 2 to 32 (timm's ``features_only``): stride-4 2D
heatmaps, the soft-argmax read-out and the lifting depth head. The pipeline keeps its regression: its later
nets read embeddings, not images.
"""
from collections import OrderedDict

import timm
from torch import nn

from core.geometry import NUM_JOINTS, denormalize_uvd
from models.heads import DECODERS, PoseHead
from models.pretrained import build_backbone
from models.registry import register_model

NUM_OUTPUTS = NUM_JOINTS * 3


def regression_output(outputs, size):
    """(B, 63) normalised uvd -> (B, 21, 3) model space for a size-pixel input."""
    return denormalize_uvd(outputs.reshape(-1, NUM_JOINTS, 3), size)


HEADS = ("regression", *DECODERS)


class ResNetRegressor(nn.Module):
    """A timm ResNet whose classifier ``fc`` regresses the 63 normalised uvd values; with ``head`` 'unet' or
    'fpn', its feature maps at strides 2-32 read by ``PoseHead`` instead (``decoder_width`` channels)."""

    def __init__(self, arch, timm_name, pretrained="none", head="regression", decoder_width=64):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head={head!r}: choose one of {', '.join(HEADS)}")
        self.head_kind = head
        features = {} if head == "regression" else {"features_only": True, "out_indices": (0, 1, 2, 3, 4)}

        def build(imagenet):
            return timm.create_model(timm_name, pretrained=imagenet, num_classes=NUM_OUTPUTS, **features)

        self.backbone = build_backbone(arch, pretrained, build, prefix="backbone", head=("fc",))
        if head != "regression":
            self.head = PoseHead([3, *self.backbone.feature_info.channels()], head, decoder_width)

    def forward(self, x, return_aux=False):
        if self.head_kind == "regression":
            uvd = regression_output(self.backbone(x), x.shape[-1])
            return (uvd, {}) if return_aux else uvd
        uvd, heatmaps = self.head([x, *self.backbone(x)])  # features at strides 2..32 -> (B, J, 3)
        return (uvd, {"heatmaps2d": [heatmaps]}) if return_aux else uvd


def embedding_pipeline(imagenet):
    """image -> ResNet50 -> (1, 32, 32) -> ResNet50 -> (1, 16, 16) -> ResNet34 -> 63 values."""
    return nn.Sequential(OrderedDict(
        stage1=timm.create_model("resnet50", pretrained=imagenet, num_classes=32 * 32),
        to_map1=nn.Unflatten(1, (1, 32, 32)),
        stage2=timm.create_model("resnet50", pretrained=imagenet, in_chans=1, num_classes=16 * 16),
        to_map2=nn.Unflatten(1, (1, 16, 16)),
        stage3=timm.create_model("resnet34", pretrained=imagenet, in_chans=1, num_classes=NUM_OUTPUTS),
    ))


class PipelinedResNets(nn.Module):
    """Reichardt 2021's 2 x ResNet50 + ResNet34. 'imagenet' initialises all three nets (timm sums the RGB filters of
    the stem for the one-channel inputs); a local file must hold the whole pipeline (``pipeline.*``)."""

    def __init__(self, arch, pretrained="none"):
        super().__init__()
        self.pipeline = build_backbone(arch, pretrained, embedding_pipeline, prefix="pipeline")

    def forward(self, x, return_aux=False):
        uvd = regression_output(self.pipeline(x), x.shape[-1])
        return (uvd, {}) if return_aux else uvd


@register_model("resnet34", paper="reichardt2021",
                summary="timm ResNet34 regressing the 63 normalised uvd values directly")
def resnet34(pretrained="none", head="regression", decoder_width=64):
    return ResNetRegressor("resnet34", "resnet34", pretrained, head, decoder_width)


@register_model("resnet101", paper="reichardt2021",
                summary="timm ResNet101 regressing the 63 normalised uvd values directly")
def resnet101(pretrained="none", head="regression", decoder_width=64):
    return ResNetRegressor("resnet101", "resnet101", pretrained, head, decoder_width)


@register_model("res50x2_res34", paper="reichardt2021",
                summary="pipeline ResNet50 -> 32x32 embedding -> ResNet50 -> 16x16 embedding -> ResNet34 -> 63 values")
def res50x2_res34(pretrained="none"):
    return PipelinedResNets("res50x2_res34", pretrained)
