"""Backbone weights for every family: ``--pretrained none | imagenet | PATH`` in one place.

* ``none``: random initialisation.
* ``imagenet``: the library's own loading path (smp ``weights='imagenet'``, timm ``pretrained=True``). A failed
  download becomes a one-line UserError that points at the offline alternatives.
* ``PATH``: a local file loaded into the backbone only (the task head keeps its initialisation). Accepted:
  a state dict of the backbone (``.pt``/``.pth`` via ``torch.load(weights_only=True)``, or ``.safetensors``,
  e.g. the file the library would have downloaded), or a checkpoint of this project (a dict whose ``'model'``
  or ``'state_dict'`` entry is the whole model's state dict; the backbone's entries are picked by its prefix).
  Loading is strict: a missing file, an unreadable file or keys/shapes that do not fit are UserErrors naming
  the file. The only leniency is ``head``: the backbone's own output layer (e.g. timm's ``fc``, which the
  model re-purposes as its regression head), which is loaded when the file's shapes fit and skipped otherwise
  (an ImageNet classifier), as timm does for ``pretrained=True``.
"""
import os
import pickle
from pathlib import Path
from urllib.error import URLError

import torch
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors

from core.common import UserError

# What smp and timm raise when the weights cannot be fetched: no connection or offline mode
# (LocalEntryNotFoundError), an HTTP error from the hub (HfHubHTTPError), a plain URL download
# (torch.hub, URLError), and socket-level failures.
DOWNLOAD_ERRORS = (LocalEntryNotFoundError, HfHubHTTPError, URLError, ConnectionError, TimeoutError)
# What a corrupt or foreign file raises in torch.load / safetensors.
UNREADABLE_FILE_ERRORS = (pickle.UnpicklingError, EOFError, RuntimeError, SafetensorError)
CHECKPOINT_WEIGHT_KEYS = ("model", "state_dict")  # where a training checkpoint keeps the model's state dict


def build_backbone(arch, pretrained, build, prefix, head=()):
    """Build a backbone and give it the weights ``pretrained`` asks for.

    arch: the registered model name (for messages). pretrained: 'none', 'imagenet' or a path.
    build: ``build(imagenet: bool) -> nn.Module``, the library call with or without its ImageNet weights.
    prefix: the backbone's attribute name inside the model (picks its entries out of a project checkpoint).
    head: names of the backbone's own output layers (see the module docstring).
    """
    pretrained = os.fspath(pretrained)
    if pretrained == "none":
        return build(False)
    if pretrained == "imagenet":
        return _build_imagenet(arch, build)
    backbone = build(False)
    load_local_weights(backbone, pretrained, arch, prefix, head)
    return backbone


def _build_imagenet(arch, build):
    try:
        return build(True)
    except DOWNLOAD_ERRORS as err:
        raise UserError(
            f"{arch}: could not download the ImageNet weights ({type(err).__name__}); use --pretrained none, "
            f"or --pretrained PATH with a local weights file (a state dict of the {arch} backbone, "
            f"or a checkpoint of this project)") from err


def read_state_dict(path):
    """A file's tensors as a flat ``{name: tensor}``; a project checkpoint is unwrapped to its model weights."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--pretrained {path}: no such file; use --pretrained none, imagenet or a local weights file")
    try:
        if path.suffix == ".safetensors":
            state = load_safetensors(path, device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE_FILE_ERRORS as err:
        raise UserError(f"--pretrained {path}: not a readable weights file ({type(err).__name__}); "
                        f"expected a state dict (.pt/.pth/.safetensors) or a checkpoint of this project") from err
    for key in CHECKPOINT_WEIGHT_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"--pretrained {path}: holds no state dict of tensors")
    return state


def load_local_weights(backbone, path, arch, prefix, head=()):
    """Load ``path`` into ``backbone`` strictly (but for ``head``); UserError naming the file when it does not fit."""
    state = read_state_dict(path)
    marker = prefix + "."
    if any(k.startswith(marker) for k in state):  # a whole model: keep the backbone's entries
        state = {k[len(marker):]: v for k, v in state.items() if k.startswith(marker)}

    own = backbone.state_dict()

    def is_head(key):
        return any(key == h or key.startswith(h + ".") for h in head)

    def fits(key):
        return key in own and own[key].shape == state[key].shape

    state = {k: v for k, v in state.items() if fits(k) or not is_head(k)}
    missing = [k for k in own if k not in state and not is_head(k)]
    unexpected = [k for k in state if k not in own]
    misshaped = [k for k in state if k in own and not fits(k)]
    if missing or unexpected or misshaped:
        examples = ", ".join((missing + unexpected + misshaped)[:3])
        raise UserError(f"--pretrained {path}: does not fit the {arch} backbone ({len(missing)} missing, "
                        f"{len(unexpected)} unexpected, {len(misshaped)} misshaped keys, e.g. {examples})")
    # nn.Module's own loader: some library encoders override load_state_dict to drop keys silently.
    torch.nn.Module.load_state_dict(backbone, state, strict=False)
