"""The FreiHAND evaluation protocol on 21 joints, batched in numpy.

Alignment (FreiHAND's ``align_w_scale``): centre both sets, scale each to unit Frobenius norm, fit the
orthogonal Procrustes rotation (with reflections, as FreiHAND's code; the MP21 scorer corrects reflections:
``allow_reflection=False``) and its scale, and map the prediction onto the ground truth.

Unaligned (camera space): the joints as predicted, root depth included. FreiHAND's scorer (its eval.py) writes
the mean over joints of the per-joint mean Euclidean distance, in cm, as ``xyz_mean3d``; with every joint
scored, that is ``camera_mpjpe_mm`` / 10.
"""
import numpy as np

from core.geometry import ROOT_JOINT

AUC_THRESHOLDS_MM = np.linspace(0.0, 50.0, 100)
F_THRESHOLDS_MM = (5.0, 15.0)
ROOT_OFF_MM = 100.0  # a hand whose root is further than this from the truth in camera space counts as misplaced
ROOT_OFF_KEY = f"root_over_{ROOT_OFF_MM / 10:g}cm"  # its share of the hands, in evaluate()'s result


def procrustes_align(pred, gt, allow_reflection=True):
    """Prediction (N, J, 3) similarity-aligned onto ground truth (N, J, 3); same unit as the inputs."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    mu_pred, mu_gt = pred.mean(1, keepdims=True), gt.mean(1, keepdims=True)
    p, g = pred - mu_pred, gt - mu_gt
    norm_pred = np.linalg.norm(p, axis=(1, 2), keepdims=True) + 1e-8
    norm_gt = np.linalg.norm(g, axis=(1, 2), keepdims=True) + 1e-8
    p, g = p / norm_pred, g / norm_gt
    # scipy.linalg.orthogonal_procrustes(g, p): R = U V^T from svd(g^T p) minimises |g R - p|, scale = sum(S)
    u, s, vt = np.linalg.svd(np.swapaxes(g, 1, 2) @ p)
    if not allow_reflection:
        sign = np.sign(np.linalg.det(u @ vt))  # (N,), -1 where the best fit is a reflection
        u[:, :, -1] *= sign[:, None]
        s[:, -1] *= sign
    rotation = u @ vt
    scale = s.sum(1)[:, None, None]
    return (p @ np.swapaxes(rotation, 1, 2)) * scale * norm_gt + mu_gt


def joint_errors(pred, gt):
    """Euclidean error (N, J) per joint."""
    return np.linalg.norm(np.asarray(pred, np.float64) - np.asarray(gt, np.float64), axis=-1)


def pa_mpjpe(pred, gt, allow_reflection=True):
    """Procrustes-aligned mean per-joint error (N,), in the inputs' unit."""
    return joint_errors(procrustes_align(pred, gt, allow_reflection), gt).mean(1)


def root_relative_mpjpe(pred, gt, root=ROOT_JOINT):
    """Mean per-joint error (N,) after moving both roots to the origin (no rotation or scale)."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    return joint_errors(pred - pred[:, root:root + 1], gt - gt[:, root:root + 1]).mean(1)


def camera_scores(pred_mm, gt_mm, root=ROOT_JOINT):
    """Unaligned figures of predictions and ground truth (N, 21, 3) in mm: mean per-joint camera-space error,
    its AUC over 0-50 mm, the share of hands whose root is more than ROOT_OFF_MM off and the largest root depth
    error."""
    errors = joint_errors(pred_mm, gt_mm)                                    # (N, J)
    return {"camera_mpjpe_mm": float(errors.mean()), "camera_auc_0_50mm": pck_auc(errors),
            ROOT_OFF_KEY: float((errors[:, root] > ROOT_OFF_MM).mean()),
            "root_depth_error_max_mm": float(np.abs(pred_mm[:, root, 2] - gt_mm[:, root, 2]).max())}


def pck_auc(errors_mm, thresholds=AUC_THRESHOLDS_MM):
    """Area under the PCK curve (fraction of joints within each threshold), normalised to [0, 1]."""
    pck = (np.asarray(errors_mm).reshape(-1, 1) <= thresholds[None]).mean(0)
    return float(np.trapezoid(pck, thresholds) / (thresholds[-1] - thresholds[0]))


def f_score(pred, gt, threshold):
    """Per-sample F-score (N,) of two point sets: precision = share of predicted points within ``threshold``
    of some ground-truth point, recall the converse (FreiHAND's definition, here on joints)."""
    distances = np.linalg.norm(np.asarray(pred)[:, :, None] - np.asarray(gt)[:, None], axis=-1)  # (N, J, J)
    precision = (distances.min(2) < threshold).mean(1)
    recall = (distances.min(1) < threshold).mean(1)
    total = precision + recall
    return np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)


def generalized_procrustes_mean(poses, rounds=5):
    """The constant hand shape (21, 3) that fits ``poses`` (N, 21, 3) best in the least-squares sense under
    similarity alignment: their generalised-Procrustes mean (PA-MPJPE averages unsquared distances, so it is a
    strong constant answer rather than a proven optimum). Start from the first pose; each round aligns every pose
    to the current mean (centre, scale, rotation; no reflection) and averages them, rescaled to the poses' mean
    Frobenius norm."""
    poses = np.asarray(poses, np.float64)
    centred = poses - poses.mean(1, keepdims=True)
    size = np.linalg.norm(centred, axis=(1, 2)).mean()
    mean = centred[0] / np.linalg.norm(centred[0]) * size
    for _ in range(rounds):
        aligned = procrustes_align(centred, np.broadcast_to(mean, centred.shape), allow_reflection=False)
        mean = aligned.mean(0)
        mean = (mean - mean.mean(0)) / np.linalg.norm(mean - mean.mean(0)) * size
    return mean


def constant_shape_mm(shape, gt, allow_reflection=True):
    """PA-MPJPE (mm) of answering every sample of ``gt`` (N, 21, 3) metres with one ``shape`` (21, 3) metres. With
    the constant shape (``generalized_procrustes_mean`` of the training poses): the yardstick for "it learns"."""
    gt = np.asarray(gt, np.float64)
    prediction = np.broadcast_to(np.asarray(shape, np.float64), gt.shape)
    return float(pa_mpjpe(prediction, gt, allow_reflection).mean() * 1000.0)


def evaluate(pred, gt, allow_reflection=True):
    """All metrics for predictions and ground truth (N, 21, 3) in metres; errors reported in millimetres."""
    pred_mm, gt_mm = np.asarray(pred, np.float64) * 1000.0, np.asarray(gt, np.float64) * 1000.0
    if pred_mm.shape != gt_mm.shape or pred_mm.ndim != 3 or pred_mm.shape[-1] != 3:
        raise ValueError(f"pred {pred_mm.shape} and gt {gt_mm.shape} must both be (N, J, 3)")
    aligned = procrustes_align(pred_mm, gt_mm, allow_reflection)
    errors = joint_errors(aligned, gt_mm)
    result = {
        "n": int(len(gt_mm)),
        "pa_mpjpe_mm": float(errors.mean()),
        "auc_0_50mm": pck_auc(errors),
        **{f"f@{t:g}mm": float(f_score(aligned, gt_mm, t).mean()) for t in F_THRESHOLDS_MM},
        "mpjpe_mm": float(root_relative_mpjpe(pred_mm, gt_mm).mean()),
        **camera_scores(pred_mm, gt_mm),
    }
    return result
