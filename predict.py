"""Predict with rotation test-time augmentation and write submission files.

    python predict.py [--ckpt PATH] [--data-root DIR] [--split NAME] [--tta N] [--format freihand|mp21] [--out PREFIX]
"""
import contextlib

import numpy as np
import torch
from tqdm import tqdm

import geometry
from augment import warp_images
from data.loader import to_device
from models import prepare_images


def tta_affines(n, size, device=None):
    """(n, 2, 3) rotations about the input's centre by n angles evenly spaced over 360 degrees (0 first)."""
    angles = torch.arange(n, dtype=torch.float32) * (360.0 / n)
    return geometry.rotation_affine(angles, size).to(device)


def autocast(device, amp):
    """Mixed precision on CUDA (bf16 where supported, else fp16); full precision elsewhere."""
    if amp and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


@torch.no_grad()
def predict_batch(model, images, tta=1, amp=False, channels_last=False):
    """uint8 images (B, 3, S, S) on the model's device -> uvd (B, 21, 3) float32, averaged over ``tta``
    rotations, each mapped back to the unrotated input by its inverse affine. All rotations run in one forward."""
    batch, size = images.shape[0], images.shape[-1]
    x = images.float() / 255.0
    affines = tta_affines(tta, size, images.device)                               # (T, 2, 3)
    per_image = affines[None].expand(batch, tta, 2, 3).reshape(batch * tta, 2, 3)  # (B*T, 2, 3)
    if tta > 1:
        x = warp_images(x[:, None].expand(batch, tta, *x.shape[1:]).reshape(batch * tta, *x.shape[1:]), per_image)
    x = prepare_images(x)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(images.device, amp):
        uvd = model(x).float()                                                    # (B*T, 21, 3)
    uv = geometry.apply_affine(geometry.invert_affine(per_image), uvd[..., :2])
    return torch.cat([uv, uvd[..., 2:]], -1).view(batch, tta, 21, 3).mean(1)


def predict_loader(model, loader, device, tta=1, amp=False, channels_last=False, desc="predict"):
    """Predictions for every sample of ``loader``, as float64 numpy arrays in the loader's order:
    uvd (N, 21, 3), K (N, 3, 3) of the input images, ids (N,), bone_length (N,) (NaN where unknown) and
    xyz (N, 21, 3) ground truth when the split is labelled, else None."""
    model.eval()
    outputs = {"uvd": [], "K": [], "ids": [], "bone_length": [], "xyz": []}
    for batch in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True):
        batch = to_device(batch, device)
        outputs["uvd"].append(predict_batch(model, batch["image"], tta, amp, channels_last).cpu())
        for key, name in (("K", "K"), ("ids", "id"), ("bone_length", "bone_length"), ("xyz", "xyz")):
            if name in batch:
                outputs[key].append(batch[name].cpu())
    result = {k: torch.cat(v).double().numpy() if v else None for k, v in outputs.items()}
    result["ids"] = result["ids"].astype(np.int64)
    return result


def camera_joints(predictions, default_bone_length):
    """xyz (N, 21, 3) metres from predicted uvd: root depth from the bone length of *_scale.json where known,
    else ``default_bone_length`` (the training set's mean)."""
    bone = predictions["bone_length"]
    bone = np.where(np.isnan(bone), default_bone_length, bone)
    return geometry.uvd_to_xyz_by_bone(predictions["uvd"], predictions["K"], bone)
