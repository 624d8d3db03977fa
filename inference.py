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
from pathlib import Path

import numpy as np
import torch

import geometry
import models
from augment import parse_augs, resolve_options, warp_images
from checkpoints import build_model, load_checkpoint
from common import UserError, progress
from data.joints import BONES, REFERENCE_BONES_MM, bone_lengths
from data.loader import to_device
from data.readers import detect_layout, load_split
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
    for batch in progress(loader, desc=desc, unit="batch"):
        batch = to_device(batch, device)
        outputs["uvd"].append(predict_batch(model, batch["image"], tta, amp, channels_last, max_deg).cpu())
        for key, name in (("K", "K"), ("ids", "id"), ("bone_length", "bone_length"), ("xyz", "xyz")):
            if name in batch:
                outputs[key].append(batch[name].cpu())
    result = {k: torch.cat(v).double().numpy() if v else None for k, v in outputs.items()}
    result["ids"] = result["ids"].astype(np.int64)
    return result


# --- camera joints -------------------------------------------------------------------------------------------

SCALE_PAIRS = BONES              # (20, 2) the joint pairs whose expected lengths fix the root depth: every bone
PREDICTION_NOISE_M = 0.01        # a trained model's error per joint and axis (metres): how far a drawn bone may be off
REFERENCE_RATIO_SD = 0.1         # spread of a bone's length over the scale bone's, where the training labels gave none
ROOT_DEPTH_SPAN = 4.0            # root depths searched: the training mean root depth divided or multiplied by this


def bone_ratios(xyz):
    """Each bone's length over geometry.SCALE_BONE's in hands (N, 21, 3): mean and sd (20,) over the hands, what
    ``root_depths`` expects of a hand (a checkpoint's stats['bone_ratio_mean'], stats['bone_ratio_sd'])."""
    ratios = bone_lengths(xyz) / geometry.bone_length(xyz)[:, None]                 # (N, 20)
    return ratios.mean(0), ratios.std(0)


def expected_bones(stats, scale, calibration=None):
    """Expected bone lengths and least-squares weights (N, 20) of hands whose scale bone is ``scale`` (N,) metres.

    Lengths: the training labels' ratios to the scale bone (stats), else the reference hand's
    (data.joints.REFERENCE_BONES_MM, spread REFERENCE_RATIO_SD). A bone weighs by how sure its length is: its
    spread in the training hands and a model's error at either end (PREDICTION_NOISE_M). With a ``calibration``
    (``bone_calibration``: factor, spread (20,)) the lengths are those the model draws, and the weights follow
    how steadily it draws them.
    """
    if "bone_ratio_mean" in stats:
        mean, sd = np.asarray(stats["bone_ratio_mean"]), np.asarray(stats["bone_ratio_sd"])
    else:
        scale_row = [tuple(pair) for pair in SCALE_PAIRS.tolist()].index(geometry.SCALE_BONE)
        mean = REFERENCE_BONES_MM / REFERENCE_BONES_MM[scale_row]
        sd = np.where(np.arange(len(mean)) == scale_row, 0.0, REFERENCE_RATIO_SD)
    lengths = scale[:, None] * mean                                                  # (N, 20) metres
    if calibration is None:
        return lengths, 1.0 / ((scale[:, None] * sd) ** 2 + 2.0 * PREDICTION_NOISE_M ** 2)
    factor, spread = calibration
    return lengths * factor, 1.0 / (lengths * np.maximum(spread, 1e-3)) ** 2


def scale_bones(predictions, stats):
    """Length (N,) metres of each hand's scale bone: *_scale.json where known, else the training mean."""
    return np.where(np.isnan(predictions["bone_length"]), stats["bone_length_m"], predictions["bone_length"])


def bone_calibration(predictions, stats):
    """How a model draws each bone, measured on labelled predictions (``predict_loader``'s dict, with xyz): factor
    and spread (20,), the median and robust spread (1.4826 MAD) over the hands of each predicted bone's length at
    the true root depth over the length ``expected_bones`` expects. Read-outs that average (soft-argmax, TTA) draw
    the fingers short, the distal bones most, which alone would put every hand too far away."""
    truth = predictions["xyz"]
    drawn = geometry.uvd_to_xyz(predictions["uvd"], predictions["K"], truth[:, geometry.ROOT_JOINT, 2])
    ratio = bone_lengths(drawn) / expected_bones(stats, scale_bones(predictions, stats))[0]   # (N, 20)
    factor = np.median(ratio, 0)
    return factor, 1.4826 * np.median(np.abs(ratio - factor), 0)


def validation_calibration(run_dir, config, stats):
    """(``bone_calibration`` of a run's validation predictions, its val_pred.npz written with best.pt, against the
    labels of the data it trained on, or None; a line saying which)."""
    path, root = Path(run_dir) / "val_pred.npz", config.get("data_root")
    if not path.is_file() or not root or detect_layout(root) is None:
        missing = path if not path.is_file() else f"its training data {root}"
        return None, f"bone lengths as the training labels have them ({missing} not found to calibrate them)"
    with np.load(path) as saved:
        xyz, ids = saved["xyz"], saved["ids"]
    try:
        split = load_split(root, "val", config.get("folds", 0), config.get("fold", 0))
    except UserError as err:
        return None, f"bone lengths as the training labels have them (no validation labels: {err})"
    rows = {image_id: row for row, image_id in enumerate(split.image_ids)}
    if not split.labelled or any(int(i) not in rows for i in ids):
        return None, f"bone lengths as the training labels have them ({path} does not match the val split of {root})"
    rows = np.array([rows[int(i)] for i in ids])
    K = split.K[rows]
    scale = np.full(len(rows), np.nan) if split.scale is None else split.scale[rows]
    labelled = {"uvd": geometry.xyz_to_uvd(xyz, K), "K": K, "bone_length": scale, "xyz": split.xyz[rows]}
    line = f"bone lengths as this model draws them ({len(rows)} validation images of {path})"
    return bone_calibration(labelled, stats), line


def root_depths(predictions, stats, calibration=None):
    """(root depth (N,) metres, fell_back (N,) bool). The depth at which every predicted bone comes closest to its
    expected length (``expected_bones``; geometry.root_depth_from_bones) for hands whose scale bone has the length
    of *_scale.json where known, else the training set's mean (stats['bone_length_m']), searched within
    ROOT_DEPTH_SPAN of the training mean root depth (stats['root_depth_m']). Where no depth is better than another
    (every joint on one camera ray, as when an untrained model puts them all at the centre), that mean, and
    fell_back True."""
    lengths, weights = expected_bones(stats, scale_bones(predictions, stats), calibration)
    mean_depth = stats["root_depth_m"]
    bracket = (mean_depth / ROOT_DEPTH_SPAN, mean_depth * ROOT_DEPTH_SPAN)
    depth, fell_back = geometry.root_depth_from_bones(predictions["uvd"], predictions["K"], SCALE_PAIRS, lengths,
                                                      weights, bracket)
    return np.where(fell_back, mean_depth, depth), fell_back


def camera_joints(predictions, stats, calibration=None):
    """xyz (N, 21, 3) metres from predicted uvd, the root depth from ``root_depths``."""
    depth, _ = root_depths(predictions, stats, calibration)
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
