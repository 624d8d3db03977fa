"""Inference: a model's predictions for a batch or a loader, rotation TTA with the inverse transforms, and the
camera joints they give. Used by predict.py, train.py (validation), bench.py and tools/onnx_parity.py.

TTA: ``--tta N`` rotations about the input centre, spread over the range the model was trained on
(``training_rotation``), each prediction mapped back by its inverse affine and averaged; the rotations run a
few at a time (``TTA_IMAGES_PER_FORWARD``), so any N runs at bounded memory.
"""
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from core import geometry
from core.common import UserError, progress, shown, unit_float
from core.geometry import BONES, warp_images
from core.picture_files import shown_layout
from core.precision import autocast
from data.augment import parse_augs, resolve_options
from data.decoding import input_affine
from data.joints import REFERENCE_BONES_MM, bone_lengths
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
    full circle) when it drew none, as Schneider 2020's TTA."""
    names = set(parse_augs(config.get("augs", ""))) | set(parse_augs(config.get("augs_final", "")))
    if "rotate" not in names:
        return 180.0
    return float(resolve_options(config.get("aug", {}))["rotate"]["max_deg"])


TTA_IMAGES_PER_FORWARD = 256  # rotated copies per forward: any --tta runs at bounded memory


@torch.no_grad()
def predict_batch(model, images, tta=1, amp=False, channels_last=False, max_deg=180.0, mirror=False):
    """uint8 images (B, 3, S, S) on the model's device -> uvd (B, 21, 3) float32, averaged over ``tta``
    rotations (``tta_angles``), each mapped back to the unrotated input by its inverse affine. The rotations
    run in chunks of at most TTA_IMAGES_PER_FORWARD images (at least one rotation of the batch) per forward.
    ``mirror``: the images hold left hands; each is mirrored left-right, predicted as a right hand, and its
    joints mirrored back (u -> S - 1 - u)."""
    batch, size = images.shape[0], images.shape[-1]
    x = unit_float(images)
    if mirror:
        x = x.flip(-1)
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
    total = total / tta
    if mirror:
        total[..., 0] = size - 1 - total[..., 0]
    return total


def predict_loader(model, loader, device, tta=1, amp=False, channels_last=False, desc="predict", max_deg=180.0,
                   mirror=False):
    """Predictions for every sample of ``loader``, as float64 numpy arrays in the loader's order:
    uvd (N, 21, 3), K (N, 3, 3) of the input images, ids (N,), bone_length (N,) (NaN where unknown) and
    xyz (N, 21, 3) ground truth when the split is labelled, else None."""
    model.eval()
    outputs = {"uvd": [], "K": [], "ids": [], "bone_length": [], "xyz": []}
    for batch in progress(loader, desc=desc, unit="batch"):
        batch = to_device(batch, device)
        outputs["uvd"].append(predict_batch(model, batch["image"], tta, amp, channels_last, max_deg,
                                                  mirror).cpu())
        for key, name in (("K", "K"), ("ids", "id"), ("bone_length", "bone_length"), ("xyz", "xyz")):
            if name in batch:
                outputs[key].append(batch[name].cpu())
    result = {k: torch.cat(v).double().numpy() if v else None for k, v in outputs.items()}
    result["ids"] = result["ids"].astype(np.int64)
    return result


# --- camera joints -------------------------------------------------------------------------------------------
# Why the root depth is fitted to every bone and blended with the crop's framing: docs/conventions.md, "Root depth"

SCALE_PAIRS = BONES              # (20, 2) the joint pairs whose expected lengths fix the root depth: every bone
PREDICTION_NOISE_M = 0.01        # a trained model's error per joint and axis (metres): how far a drawn bone may be off
REFERENCE_RATIO_SD = 0.1         # spread of a bone's length over the scale bone's, where the training labels gave none
ROOT_DEPTH_SPAN = 4.0            # uncalibrated: root depths searched within the training mean divided or times this
FRAMING_SPAN = 3.0               # calibrated: root depths searched within this many spreads of the framing's depth


class Calibration(NamedTuple):
    """What a run's labelled validation predictions say about its root depths (``validation_calibration``)."""
    bone_factor: np.ndarray      # (20,) median of each bone's drawn length (at the true root depth) over the expected
    bone_spread: np.ndarray      # (20,) robust spread (1.4826 MAD) of that ratio: how steadily the model draws it
    framing: float               # median over the labels of log(root depth / (input focal px * scale bone))
    framing_spread: float        # its standard deviation: how far the crops' framing tells a hand's depth
    bones_weight: float          # weight of the bones' log depth against the framing's, least squares on validation


def expected_bones(stats, scale, calibration=None):
    """Expected bone lengths and least-squares weights (N, 20) of hands whose scale bone is ``scale`` (N,) metres.

    Lengths: the training labels' ratios to the scale bone (stats), else the reference hand's
    (data.joints.REFERENCE_BONES_MM, spread REFERENCE_RATIO_SD). A bone weighs by how sure its length is: its
    spread in the training hands and a model's error at either end (PREDICTION_NOISE_M). With a ``calibration``
    the lengths are those the model draws, and the weights follow how steadily it draws them.
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
    return (lengths * calibration.bone_factor,
            1.0 / (lengths * np.maximum(calibration.bone_spread, 1e-3)) ** 2)


def scale_bones(predictions, stats):
    """Length (N,) metres of each hand's scale bone: *_scale.json where known, else the training mean."""
    return np.where(np.isnan(predictions["bone_length"]), stats["bone_length_m"], predictions["bone_length"])


def framed_depths(predictions, stats, calibration):
    """Log root depth (N,) the crop's framing gives: the depth at which a hand with this scale bone fills the input
    as the validation hands did (``Calibration.framing``), from the input camera's focal length alone."""
    return calibration.framing + np.log(predictions["K"][:, 0, 0] * scale_bones(predictions, stats))


def bone_depths(predictions, stats, calibration=None):
    """(root depth (N,) metres at which the predicted bones come closest to their expected lengths, undetermined
    (N,) bool): geometry.root_depth_from_bones, searched within FRAMING_SPAN spreads of the framing's depth when
    calibrated, else within ROOT_DEPTH_SPAN of the training mean root depth (stats['root_depth_m'])."""
    lengths, weights = expected_bones(stats, scale_bones(predictions, stats), calibration)
    if calibration is None:
        bracket = (stats["root_depth_m"] / ROOT_DEPTH_SPAN, stats["root_depth_m"] * ROOT_DEPTH_SPAN)
    else:
        framed, span = framed_depths(predictions, stats, calibration), FRAMING_SPAN * calibration.framing_spread
        bracket = (np.exp(framed - span), np.exp(framed + span))
    return geometry.root_depth_from_bones(predictions["uvd"], predictions["K"], SCALE_PAIRS, lengths, weights,
                                          bracket)


def root_depths(predictions, stats, calibration=None):
    """(root depth (N,) metres, fell_back (N,) bool) of predictions (``predict_loader``'s dict).

    The bones' depth (``bone_depths``), for hands whose scale bone has the length of *_scale.json where known, else
    the training mean (stats['bone_length_m']). With a ``calibration`` it is blended in log with the framing's
    depth (``framed_depths``) by the weight fitted on validation. Where no depth fits the bones better than
    another (every joint on one camera ray, as when an untrained model puts them all at the centre): fell_back
    True and the framing's depth, else the training mean root depth (stats['root_depth_m']).
    """
    depth, fell_back = bone_depths(predictions, stats, calibration)
    if calibration is None:
        return np.where(fell_back, stats["root_depth_m"], depth), fell_back
    framed = framed_depths(predictions, stats, calibration)
    blended = calibration.bones_weight * np.log(depth) + (1.0 - calibration.bones_weight) * framed
    return np.exp(np.where(fell_back, framed, blended)), fell_back


def camera_joints(predictions, stats, calibration=None):
    """xyz (N, 21, 3) metres from predicted uvd, the root depth from ``root_depths``."""
    depth, _ = root_depths(predictions, stats, calibration)
    return geometry.uvd_to_xyz(predictions["uvd"], predictions["K"], depth)


# --- calibration on the run's validation predictions ---------------------------------------------------------

def bone_calibration(predictions, stats):
    """How a model draws each bone, on labelled predictions (``predict_loader``'s dict, with xyz): factor and
    spread (20,), the median and robust spread (1.4826 MAD) over the hands of each predicted bone's length at the
    true root depth over the length ``expected_bones`` expects. Read-outs that average (soft-argmax, TTA) draw
    the fingers short, the distal bones most, which alone would put every hand too far away."""
    truth = predictions["xyz"]
    drawn = geometry.uvd_to_xyz(predictions["uvd"], predictions["K"], truth[:, geometry.ROOT_JOINT, 2])
    ratio = bone_lengths(drawn) / expected_bones(stats, scale_bones(predictions, stats))[0]   # (N, 20)
    factor = np.median(ratio, 0)
    return factor, 1.4826 * np.median(np.abs(ratio - factor), 0)


def calibrate(predictions, stats):
    """``Calibration`` from labelled predictions (``predict_loader``'s dict with xyz, K of the network input).
    The blend weight is the least-squares one for the log depth errors of the bones (e_b) and the framing
    (e_f): (var e_f - cov) / (var e_b + var e_f - 2 cov), within [0, 1]; 1 (the bones alone) where they do
    not err."""
    factor, spread = bone_calibration(predictions, stats)
    truth = np.log(predictions["xyz"][:, geometry.ROOT_JOINT, 2])
    framing = truth - np.log(predictions["K"][:, 0, 0] * scale_bones(predictions, stats))
    partial = Calibration(factor, spread, float(np.median(framing)), float(framing.std()), 1.0)
    errors = np.stack([np.log(bone_depths(predictions, stats, partial)[0]) - truth,
                       framed_depths(predictions, stats, partial) - truth])            # (2, N)
    (var_b, cov), (_, var_f) = np.cov(errors, bias=True)
    denominator = var_b + var_f - 2.0 * cov
    weight = float(np.clip((var_f - cov) / denominator, 0.0, 1.0)) if denominator > 1e-12 else 1.0
    return partial._replace(bones_weight=weight)


def input_cameras(split, rows, size):
    """K (B, 3, 3) of the images ``rows`` of ``split`` as a size-pixel network input sees them (the square fit
    of data.dataset.decode_image; only the image headers are read)."""
    affines = []
    for row in rows:
        affines.append(input_affine(*shown_layout(split.image_paths[row], fit=size), size))
    return geometry.transform_K(np.stack(affines), split.K[rows])


def validation_calibration(run_dir, config, stats):
    """(``calibrate`` on a run's validation predictions, its val_pred.npz written with best.pt, against the labels
    of the data it trained on, or None; a line saying which)."""
    path, root = Path(run_dir) / "val_pred.npz", config.get("data_root")
    where = shown(path)
    plain = ("bone lengths as the training labels have them" if "bone_ratio_mean" in stats
             else "bone lengths as the reference hand has them")
    if not path.is_file() or not root or detect_layout(root) is None:
        missing = where if not path.is_file() else f"its training data {shown(root) if root else '(none recorded)'}"
        return None, f"{plain} ({missing} not found to calibrate)"
    with np.load(path) as saved:
        xyz, ids = saved["xyz"], saved["ids"]
    try:
        split = load_split(root, "val", config.get("folds", 0), config.get("fold", 0))
    except UserError as err:
        return None, f"{plain} (no validation labels: {err})"
    rows = {image_id: row for row, image_id in enumerate(split.image_ids)}
    if not split.labelled or any(int(i) not in rows for i in ids):
        return None, f"{plain} ({where} does not match the val split of {shown(root)})"
    rows = np.array([rows[int(i)] for i in ids])
    K = input_cameras(split, rows, config["img_size"])
    scale = np.full(len(rows), np.nan) if split.scale is None else split.scale[rows]
    labelled = {"uvd": geometry.xyz_to_uvd(xyz, K), "K": K, "bone_length": scale, "xyz": split.xyz[rows]}
    calibration = calibrate(labelled, stats)
    return calibration, (f"calibrated on {len(rows)} validation images of {where}: bone lengths as this model "
                         f"draws them, blended {calibration.bones_weight:.2f} : {1 - calibration.bones_weight:.2f} "
                         f"with the crop's framing")
