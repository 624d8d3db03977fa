"""Inference: a model's predictions for a batch or a loader, rotation TTA with the inverse transforms, and the
camera joints they give; and reading a checkpoint for prediction. Used by predict.py, train.py (validation),
ensemble.py and bench.py.

TTA: ``--tta N`` rotations about the input centre, spread over the range the model was trained on
(``training_rotation``), each prediction mapped back by its inverse affine and averaged; the rotations run a
few at a time (``TTA_IMAGES_PER_FORWARD``), so any N runs at bounded memory.
"""
import contextlib
import inspect
import pickle

import numpy as np
import torch
from tqdm import tqdm

import geometry
import models
from augment import parse_augs, resolve_options, warp_images
from checkpoints import build_model, load_checkpoint
from common import UserError
from data.loader import to_device
from models import prepare_images


# --- predictions -------------------------------------------------------------------------------------

def tta_angles(n, max_deg=180.0):
    """(n,) rotation angles in degrees: evenly spaced over the full circle (0 first) when ``max_deg`` >= 180,
    else evenly spaced over [-max_deg, max_deg], the range the model was trained on (one angle: 0)."""
    if max_deg >= 180.0 or n == 1:
        return torch.arange(n, dtype=torch.float32) * (360.0 / n)
    return torch.linspace(-max_deg, max_deg, n)


def tta_affines(n, size, device=None, max_deg=180.0):
    """(n, 2, 3) rotations about the input's centre by ``tta_angles(n, max_deg)``."""
    return geometry.rotation_affine(tta_angles(n, max_deg), size).to(device)


def training_rotation(config):
    """The largest rotation (degrees) the run's training augmentation drew, from its resolved config; 180 (the
    full circle) when it drew none, as the seed's TTA."""
    names = set(parse_augs(config.get("augs", ""))) | set(parse_augs(config.get("augs_final", "")))
    if "rotate" not in names:
        return 180.0
    return float(resolve_options(config.get("aug", {}))["rotate"]["max_deg"])


def autocast(device, amp):
    """Mixed precision on CUDA (bf16 where supported, else fp16); full precision elsewhere."""
    if amp and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


TTA_IMAGES_PER_FORWARD = 256  # rotated copies per forward: any --tta runs at bounded memory


@torch.no_grad()
def predict_batch(model, images, tta=1, amp=False, channels_last=False, max_deg=180.0):
    """uint8 images (B, 3, S, S) on the model's device -> uvd (B, 21, 3) float32, averaged over ``tta``
    rotations (``tta_angles``), each mapped back to the unrotated input by its inverse affine. The rotations
    run in chunks of at most TTA_IMAGES_PER_FORWARD images (at least one rotation of the batch) per forward."""
    batch, size = images.shape[0], images.shape[-1]
    x = images.float() / 255.0
    affines = tta_affines(tta, size, images.device, max_deg)                      # (T, 2, 3)
    chunk = max(1, TTA_IMAGES_PER_FORWARD // max(batch, 1))
    total = torch.zeros(batch, 21, 3, device=images.device)
    for first in range(0, tta, chunk):
        part = affines[first:first + chunk]                                        # (t, 2, 3)
        t = len(part)
        per_image = part[None].expand(batch, t, 2, 3).reshape(batch * t, 2, 3)    # (B*t, 2, 3)
        xs = x[:, None].expand(batch, t, *x.shape[1:]).reshape(batch * t, *x.shape[1:])
        if tta > 1:
            xs = warp_images(xs, per_image)
        xs = prepare_images(xs)
        if channels_last:
            xs = xs.contiguous(memory_format=torch.channels_last)
        with autocast(images.device, amp):
            uvd = model(xs).float()                                                # (B*t, 21, 3)
        uv = geometry.apply_affine(geometry.invert_affine(per_image), uvd[..., :2])
        total += torch.cat([uv, uvd[..., 2:]], -1).view(batch, t, 21, 3).sum(1)
    return total / tta


def predict_loader(model, loader, device, tta=1, amp=False, channels_last=False, desc="predict", max_deg=180.0):
    """Predictions for every sample of ``loader``, as float64 numpy arrays in the loader's order:
    uvd (N, 21, 3), K (N, 3, 3) of the input images, ids (N,), bone_length (N,) (NaN where unknown) and
    xyz (N, 21, 3) ground truth when the split is labelled, else None."""
    model.eval()
    outputs = {"uvd": [], "K": [], "ids": [], "bone_length": [], "xyz": []}
    for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True):
        batch = to_device(batch, device)
        outputs["uvd"].append(predict_batch(model, batch["image"], tta, amp, channels_last, max_deg).cpu())
        for key, name in (("K", "K"), ("ids", "id"), ("bone_length", "bone_length"), ("xyz", "xyz")):
            if name in batch:
                outputs[key].append(batch[name].cpu())
    result = {k: torch.cat(v).double().numpy() if v else None for k, v in outputs.items()}
    result["ids"] = result["ids"].astype(np.int64)
    return result


def root_depths(predictions, stats):
    """(root depth (N,) metres, fell_back (N,) bool). The depth that gives geometry.SCALE_BONE the bone length of
    *_scale.json where known, else the training set's mean (stats['bone_length_m']). Where no positive depth
    does (the bone's two joints on one camera ray, as when an untrained model puts every joint at the centre),
    the training set's mean root depth (stats['root_depth_m']) and fell_back True."""
    bone = predictions["bone_length"]
    bone = np.where(np.isnan(bone), stats["bone_length_m"], bone)
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = geometry.root_depth_from_bone(predictions["uvd"], predictions["K"], bone)
    fell_back = ~(np.isfinite(depth) & (depth > 0))
    return np.where(fell_back, stats["root_depth_m"], depth), fell_back


def camera_joints(predictions, stats):
    """xyz (N, 21, 3) metres from predicted uvd, the root depth from ``root_depths``."""
    depth, _ = root_depths(predictions, stats)
    return geometry.uvd_to_xyz(predictions["uvd"], predictions["K"], depth)


# --- checkpoints ---------------------------------------------------------------------------------------------

def read_checkpoint(path):
    """``checkpoints.load_checkpoint`` plus what prediction needs: a config naming the model and its input size,
    and the training stats. Every problem is a UserError naming the file."""
    try:
        state = load_checkpoint(path)
    except pickle.UnpicklingError as err:  # a text or foreign file that torch.load reads as a pickle
        raise UserError(f"checkpoint {path} cannot be read (UnpicklingError: {err}); it is broken or not a "
                        f"PyTorch file: use another checkpoint") from None
    missing = [key for key in ("arch", "img_size", "model") if key not in state["config"]]
    missing += [f"stats.{key}" for key in ("bone_length_m", "root_depth_m")
                if key not in state.get("stats", {})]
    if missing:
        raise UserError(f"checkpoint {path} lacks {', '.join(missing)}; pass a best.pt written by train.py")
    return state


def load_model(state, path):
    """The checkpoint's model, weights loaded, in eval mode on the CPU. A config whose arch or model options do
    not fit the weights (another arch's checkpoint, an edited config.json) is a UserError naming the file."""
    config = state["config"]
    try:
        builder = models.model_entry(config["arch"]).builder
        try:
            inspect.signature(builder).bind(pretrained="none", **config["model"])
        except TypeError as err:  # bind() raises TypeError exactly when the options do not fit the builder
            raise UserError(f"model options {config['model']} do not fit arch {config['arch']!r} ({err})") from None
        return build_model(state)
    except UserError as err:
        raise UserError(f"checkpoint {path}: {err}; it holds another arch's weights or an edited config: "
                        f"use the best.pt its run wrote") from None
