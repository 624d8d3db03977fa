import json

import numpy as np
import pytest
from scipy.linalg import orthogonal_procrustes
from scipy.spatial.transform import Rotation

from core.geometry import ROOT_JOINT
from scoring import metrics, report


def freihand_align_w_scale(gt, pred):
    """FreiHAND's reference alignment of one sample (its eval code, written out independently)."""
    t1, t2 = gt.mean(0), pred.mean(0)
    gt_t, pred_t = gt - t1, pred - t2
    s1, s2 = np.linalg.norm(gt_t) + 1e-8, np.linalg.norm(pred_t) + 1e-8
    gt_t, pred_t = gt_t / s1, pred_t / s2
    R, s = orthogonal_procrustes(gt_t, pred_t)
    return np.dot(pred_t, R.T) * s * s1 + t1


@pytest.fixture
def poses():
    rng = np.random.default_rng(3)
    gt = rng.normal(scale=0.05, size=(40, 21, 3)) + [0, 0, 0.6]
    pred = gt + rng.normal(scale=0.01, size=gt.shape)
    return pred, gt


def test_pa_mpjpe_agrees_with_reference_implementation(poses):
    pred, gt = poses
    reference = np.array([np.linalg.norm(freihand_align_w_scale(g, p) - g, axis=1).mean()
                          for p, g in zip(pred, gt)])
    np.testing.assert_allclose(metrics.pa_mpjpe(pred, gt), reference, atol=1e-6, rtol=0)


def test_similar_copy_scores_zero(poses):
    _, gt = poses
    rotations = Rotation.random(len(gt), random_state=1).as_matrix()
    copy = 2.7 * np.einsum("nij,nkj->nki", rotations, gt) + [0.3, -0.2, 1.0]
    assert metrics.pa_mpjpe(copy, gt).max() < 1e-7
    assert metrics.pa_mpjpe(copy, gt, allow_reflection=False).max() < 1e-7


def test_mirror_scores_zero_only_with_reflections(poses):
    _, gt = poses
    mirrored = gt * [-1, 1, 1]
    assert metrics.pa_mpjpe(mirrored, gt).max() < 1e-7
    assert metrics.pa_mpjpe(mirrored, gt, allow_reflection=False).min() > 1e-3


def test_pa_mpjpe_keeps_the_inputs_unit(poses):
    pred, gt = poses
    np.testing.assert_allclose(metrics.pa_mpjpe(pred * 1000, gt * 1000), metrics.pa_mpjpe(pred, gt) * 1000)


def test_evaluate_hand_computed_values():
    gt = np.zeros((1, 21, 3))
    gt[0, :, 0] = np.arange(21) * 0.01  # joints 1 cm apart on a line
    pred = gt.copy()
    pred[0, :, 1] += 0.002  # a pure translation by 2 mm: aligned away
    result = metrics.evaluate(pred, gt)
    assert result["pa_mpjpe_mm"] == pytest.approx(0, abs=1e-6)
    assert result["mpjpe_mm"] == pytest.approx(0, abs=1e-9)  # root-relative removes a translation
    assert result["f@5mm"] == 1.0 and result["auc_0_50mm"] > 0.99  # 0 mm threshold misses rounding


def freihand_unaligned(gt, pred):
    """FreiHAND's scorer on camera-space joints, not aligned (its EvalUtil, written out independently): each
    joint's errors collected over the samples, each joint's mean and PCK curve over 0-5 cm (100 thresholds),
    then the mean over joints; ``xyz_mean3d`` in cm as in its scores file, and ``xyz_auc3d``."""
    per_joint = [[np.linalg.norm(g[j] - p[j]) for g, p in zip(gt, pred)] for j in range(gt.shape[1])]
    thresholds = np.linspace(0.0, 0.05, 100)
    norm = np.trapezoid(np.ones_like(thresholds), thresholds)
    aucs = [np.trapezoid([np.mean(np.array(e) <= t) for t in thresholds], thresholds) / norm for e in per_joint]
    return np.mean([np.mean(e) for e in per_joint]) * 100.0, np.mean(aucs)


def test_camera_space_figures_are_freihands_unaligned_ones(poses):
    pred, gt = poses
    pred = pred + np.random.default_rng(4).normal(0.0, 0.02, (len(pred), 1, 3))   # each hand moved a little
    mean3d_cm, auc3d = freihand_unaligned(gt, pred)
    result = metrics.evaluate(pred, gt)
    assert result["camera_mpjpe_mm"] == pytest.approx(mean3d_cm * 10.0, rel=1e-9)
    assert result["camera_auc_0_50mm"] == pytest.approx(auc3d, abs=1e-9)


def test_camera_space_figures_see_what_alignment_removes(poses):
    """Half the hands 5 cm too far, half 15 cm: aligned and root-relative figures do not see it, the camera-space
    error is their mean, and half the roots are more than 10 cm off."""
    _, gt = poses
    pred = gt + np.where(np.arange(len(gt)) % 2, 0.05, 0.15)[:, None, None] * [0.0, 0.0, 1.0]
    result = metrics.evaluate(pred, gt)
    assert result["pa_mpjpe_mm"] == pytest.approx(0, abs=1e-6) and result["mpjpe_mm"] == pytest.approx(0, abs=1e-9)
    assert result["camera_mpjpe_mm"] == pytest.approx(100.0)
    assert result[metrics.ROOT_OFF_KEY] == 0.5 and result["root_depth_error_max_mm"] == pytest.approx(150.0)


def test_auc_and_f_score_by_hand():
    errors = np.array([0.0, 25.0, 60.0])  # mm
    # PCK is 1/3 up to 25 mm (exclusive), 2/3 from 25 to 50 mm; trapezoid over the 100-point grid
    auc = metrics.pck_auc(errors)
    assert auc == pytest.approx(0.5, abs=0.01)
    pred = np.array([[[0, 0, 0], [10, 0, 0.0]]])
    gt = np.array([[[0, 0, 0], [0, 20, 0.0]]])
    # precision: pred0 near gt0 (yes), pred1 10 from gt0 (no at 5mm) -> 0.5; recall likewise 0.5
    assert metrics.f_score(pred, gt, 5.0)[0] == pytest.approx(0.5)
    assert metrics.f_score(pred, gt, 15.0)[0] == pytest.approx(2 * 1.0 * 0.5 / 1.5)


def test_root_relative_mpjpe_by_hand():
    gt = np.zeros((1, 21, 3))
    pred = gt.copy()
    pred[0, 0] = [0.003, 0.004, 0]  # one joint 5 mm off, root untouched
    assert metrics.root_relative_mpjpe(pred * 1000, gt * 1000)[0] == pytest.approx(5.0 / 21)


# --- the yardstick: the best constant hand -----------------------------------------------------------------

def similar_copies(shape, n, seed):
    """``n`` copies of ``shape`` (21, 3), each rotated, scaled and moved at random."""
    rng = np.random.default_rng(seed)
    rotations = Rotation.random(n, random_state=seed).as_matrix()          # (n, 3, 3)
    scales = rng.uniform(0.5, 2.0, (n, 1, 1))
    return scales * shape @ np.swapaxes(rotations, 1, 2) + rng.normal(size=(n, 1, 3))


def test_procrustes_mean_of_similar_copies_is_the_shape():
    shape = np.random.default_rng(0).normal(scale=0.05, size=(21, 3))
    mean = metrics.generalized_procrustes_mean(similar_copies(shape, 30, seed=1))
    assert metrics.constant_shape_mm(mean, shape[None]) < 1e-4


def test_constant_shape_beats_the_unaligned_mean_and_every_training_pose():
    """Hands (a shared shape, each deformed) seen from random views: the plain average of the root-relative
    poses blurs the views together; the Procrustes mean does not, and scores at least as well as any single
    training pose used as the constant answer."""
    rng = np.random.default_rng(2)
    base = rng.normal(scale=0.05, size=(21, 3))
    train = similar_copies(base, 200, seed=3) + rng.normal(scale=0.004, size=(200, 21, 3))
    evaluation = similar_copies(base, 50, seed=4) + rng.normal(scale=0.004, size=(50, 21, 3))
    constant = metrics.constant_shape_mm(metrics.generalized_procrustes_mean(train), evaluation)
    unaligned_mean = (train - train[:, ROOT_JOINT:ROOT_JOINT + 1]).mean(0)   # (21, 3) root-relative, averaged as is
    assert constant < 0.5 * metrics.constant_shape_mm(unaligned_mean, evaluation)
    assert constant <= min(metrics.constant_shape_mm(pose, evaluation) for pose in train[:20])


def test_metrics_files_of_earlier_versions_read_under_the_current_keys(tmp_path):
    """Earlier versions wrote the constant shape as constant_shape_pa_mpjpe_mm and of_constant_shape."""
    path = tmp_path / "old.metrics.json"
    path.write_text(json.dumps({"n": 3, "reflections_allowed": {"pa_mpjpe_mm": 30.0, "constant_shape_pa_mpjpe_mm": 20.0,
                                                                "of_constant_shape": 1.5}}))
    assert report.read_scores(path)["reflections_allowed"] == {"pa_mpjpe_mm": 30.0, "constant_shape_mm": 20.0,
                                                                "fraction_of_constant_shape": 1.5}
