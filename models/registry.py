"""Model registry: ``@register_model`` on a builder, ``create_model(name)`` to build one.

The contract every registered model keeps (training, TTA and ensembling rely on it):
* input: a float batch (B, 3, H, W), RGB normalised with IMAGENET_MEAN / IMAGENET_STD (``prepare_images``);
* ``model(x)`` returns (B, 21, 3) in the codec's model space (``geometry``): u, v in input pixels with pixel
  centres on integers, d the root-relative depth over DEPTH_RANGE_M; joints in FreiHAND order;
* ``model(x, return_aux=True)`` returns ``(uvd, aux)``, a dict of extra outputs the losses may use:
  ``heatmaps1d`` (B, 21, 3, L) per-axis probabilities and ``logits1d`` their logits, ``heatmaps2d`` list of
  (B, 21, h, w) maps, one per supervised stage.
"""
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from core.common import UserError, unit_float

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., torch.nn.Module]
    paper: str         # the paper it implements, first author and year, e.g. "schneider2020"
    summary: str       # one line for --list-archs and the README
    head_options: dict = field(default_factory=dict)   # option -> the heads that read it (the others would not)
    default_head: Optional[str] = None                 # the head when the options name none
    resizable: bool = True      # takes another input size with the same weights (a training stage's new size)
    size_multiple: int = 32     # input sizes it takes are multiples of this (its deepest stride)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name, *, paper, summary, head_options=None, default_head=None, resizable=True, size_multiple=32):
    """Decorator for ``builder(pretrained='none', **options) -> nn.Module``. ``head_options``: the options only some
    heads read, each with those heads (``options['head']``, else ``default_head``); given to another, a ValueError.
    ``resizable``: whether the weights take another input size (no layer sized by the input, such as a flattened
    feature map into a Linear); ``size_multiple``: the multiple such sizes must be."""
    def decorate(builder):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, builder, paper, summary, dict(head_options or {}), default_head,
                                     resizable, size_multiple)
        return builder
    return decorate


def list_models():
    return sorted(_REGISTRY)


def model_entry(name):
    if name not in _REGISTRY:
        raise UserError(f"unknown arch {name!r}; valid names: {', '.join(list_models())}")
    return _REGISTRY[name]


def check_head_options(entry, options):
    """A ValueError when ``options`` give an option to a head that would not read it (``entry.head_options``). A head
    the arch does not know is left to its builder to refuse."""
    head = options.get("head", entry.default_head)
    known = {entry.default_head, *(h for heads in entry.head_options.values() for h in heads)}
    unread = [key for key, heads in entry.head_options.items() if key in options and head not in heads]
    if head in known and unread:
        raise ValueError(f"{', '.join(unread)}: not read by head={head!r}")


def create_model(name, pretrained="none", **options):
    """Build a registered model. ``pretrained``: 'none', 'imagenet' or a path to a local weights file."""
    entry = model_entry(name)
    check_head_options(entry, options)
    return entry.builder(pretrained=pretrained, **options)


def check_model_options(name, options):
    """The one check that model ``options`` fit arch ``name``: the model built on the meta device (no memory, no
    weights). An option its builder does not take, one its head would not read or a value it refuses is a ValueError
    saying which; an unknown arch a UserError."""
    try:
        with torch.device("meta"):
            create_model(name, pretrained="none", **options)
    except TypeError as err:  # an option the builder does not take
        raise ValueError(str(err)) from None


def prepare_images(images):
    """(B, 3, H, W) uint8, or float in [0, 1], on any device -> float32 normalised network input, same device."""
    images = unit_float(images)
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std
