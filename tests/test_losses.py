"""Every loss term against a value computed by hand."""
import math

import pytest
import torch

from core.common import UserError
from core.geometry import BONES
from core.geometry import DEPTH_RANGE_M, ROOT_JOINT, xyz_to_uvd
from models import heatmaps, losses
from models.losses import pose_loss

SIZE = 128
K = torch.tensor([[200.0, 0.0, 64.0], [0.0, 200.0, 64.0], [0.0, 0.0, 1.0]])
BONE_M = 0.015  # every bone of the test skeleton: 0.1 in loss units (DEPTH_RANGE_M = 0.15 m)


def skeleton():
    """(21, 3) metres: straight fingers of 4 bones of BONE_M from a wrist at 0.5 m, fanned in the image plane
    and tilted in depth."""
    joints = torch.zeros(21, 3)
    joints[0] = torch.tensor([0.0, 0.02, 0.5])
    for finger, angle in enumerate([-60.0, -30.0, 0.0, 30.0, 60.0]):
        rad = math.radians(angle)
        direction = torch.tensor([math.sin(rad), -math.cos(rad), 0.5 * math.sin(rad)])
        direction = direction / direction.norm()
        for k in range(4):
            joint = 1 + 4 * finger + k
            parent = 0 if k == 0 else joint - 1
            joints[joint] = joints[parent] + BONE_M * direction
    return joints


def target_for(xyz):
    """The loss target of camera-space joints (B, 21, 3) seen through K in a SIZE-pixel input."""
    batch = xyz.shape[0]
    return {"uvd": xyz_to_uvd(xyz, K), "visible": torch.ones(batch, 21), "K": K.expand(batch, 3, 3),
            "root_depth": xyz[:, ROOT_JOINT, 2], "size": SIZE}


def about_root(xyz, factor):
    """Joints scaled by ``factor`` about the root joint."""
    root = xyz[:, ROOT_JOINT:ROOT_JOINT + 1]
    return root + factor * (xyz - root)


def test_skeleton_has_the_bone_length_it_claims():
    xyz = skeleton()
    lengths = (xyz[BONES[:, 1]] - xyz[BONES[:, 0]]).norm(dim=-1)
    assert torch.allclose(lengths, torch.full((20,), BONE_M))


# --- terms on normalised uvd -------------------------------------------------------------------------------

def uvd_pair():
    """Target and prediction (1, 21, 3) in an 8 px input: u off by 2 px (0.5 normalised), d off by 0.3;
    joints 0-9 invisible with a 100 px error that must not count."""
    target = {"uvd": torch.zeros(1, 21, 3) + torch.tensor([3.0, 4.0, 0.1]), "visible": torch.ones(1, 21),
              "K": K[None], "root_depth": torch.ones(1), "size": 8}
    target["visible"][0, :10] = 0
    pred = target["uvd"] + torch.tensor([2.0, 0.0, 0.3])
    pred[0, :10, 0] += 100.0
    return pred, target


@pytest.mark.parametrize("term, expected", [
    ("coord_l1", (11 * 0.5 + 21 * 0.3) / (2 * 11 + 21)),      # u, v of 11 visible joints, d of all 21
    ("coord_mse", (11 * 0.25 + 21 * 0.09) / (2 * 11 + 21)),
    ("uv_l1", 11 * 0.5 / 22),
    ("depth_l1", 0.3),
])
def test_coordinate_terms(term, expected):
    pred, target = uvd_pair()
    total, parts = pose_loss(pred, {}, target, {term: 2.0})
    assert parts[term].item() == pytest.approx(expected)
    assert total.item() == pytest.approx(2.0 * expected)


# --- heatmap terms -----------------------------------------------------------------------------------------

def test_heatmap_target_peaks_on_the_right_pixel():
    """A 32x32 map of a 128 px input: map pixel i covers input pixels 4i .. 4i+3, centre 4i + 1.5."""
    uv = torch.tensor([[[41.5, 1.5]]])  # map column 10, row 0
    maps = heatmaps.gaussian_heatmaps(uv, SIZE, 32, 32, sigma=2.0)[0, 0]
    assert maps.argmax().item() == 0 * 32 + 10
    assert maps[0, 10].item() == pytest.approx(1.0)
    assert maps[0, 11].item() == pytest.approx(math.exp(-1 / 8))  # one map pixel away, sigma 2
    assert maps[1, 10].item() == pytest.approx(math.exp(-1 / 8))


def test_heatmap2d_sums_the_stages_over_visible_joints():
    """Zero maps against needle targets (sigma 0.01 on a pixel centre): each stage costs 1 / (8 * 8)."""
    uvd = torch.zeros(2, 21, 3)
    uvd[..., :2] = 4 * 3 + 1.5  # map pixel (3, 3) of 8x8 over a 32 px input
    target = {"uvd": uvd, "visible": torch.ones(2, 21), "K": K.expand(2, 3, 3), "root_depth": torch.ones(2),
              "size": 32}
    target["visible"][1, 5] = 0
    maps = [torch.zeros(2, 21, 8, 8), torch.zeros(2, 21, 8, 8)]
    maps[1][1, 5] = 7.0  # an invisible joint's map: ignored
    _, parts = pose_loss(uvd, {"heatmaps2d": maps}, target, {"heatmap2d": 1.0, "heatmap_sigma": 0.01})
    assert parts["heatmap2d"].item() == pytest.approx(2 / 64)


def test_jensen_shannon_by_hand():
    one_hot = torch.tensor([1.0, 0.0])
    half = torch.tensor([0.5, 0.5])
    assert losses.jensen_shannon(half, half).item() == pytest.approx(0.0, abs=1e-7)
    assert losses.jensen_shannon(one_hot, torch.tensor([0.0, 1.0])).item() == pytest.approx(math.log(2))
    # m = (0.75, 0.25): (ln(1/0.75) + 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25)) / 2
    expected = 0.5 * (math.log(1 / 0.75) + 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(2.0))
    assert losses.jensen_shannon(one_hot, half).item() == pytest.approx(expected)


def test_js1d_target_is_a_gaussian_of_variance_2_at_the_target_bin():
    pixels = torch.arange(32) * 4.0 + 1.5  # bin centres of 32 bins over 128 px
    q = heatmaps.gaussian_1d(torch.tensor([[41.5]]), pixels, variance=2.0)[0, 0]
    bins = torch.arange(32.0)
    assert q.argmax().item() == 10
    assert q.sum().item() == pytest.approx(1.0)
    assert (q * (bins - 10) ** 2).sum().item() == pytest.approx(2.0, rel=1e-4)


def test_js1d_is_zero_on_its_own_targets_and_ignores_invisible_joints():
    pred, target = uvd_pair()
    target["size"] = 32
    centres = torch.arange(16.0) * 2 + 0.5  # 16 bins over 32 px
    depth_centres = (torch.arange(16.0) + 0.5) / 8 - 1
    probs = torch.stack([heatmaps.gaussian_1d(target["uvd"][..., 0], centres, 2.0),
                         heatmaps.gaussian_1d(target["uvd"][..., 1], centres, 2.0),
                         heatmaps.gaussian_1d(target["uvd"][..., 2], depth_centres, 2.0)], 2)
    probs[0, :10, 0] = torch.eye(16)[0]  # invisible joints' u: anything
    _, parts = pose_loss(pred, {"heatmaps1d": probs}, target, {"js1d": 1.0})
    assert parts["js1d"].item() == pytest.approx(0.0, abs=1e-6)


def test_simcc_kl_is_zero_on_its_own_labels_at_any_temperature_and_positive_elsewhere():
    """KL(labels || softmax(logits / tau)): logits equal to tau * log(labels) reproduce the labels exactly."""
    pred, target = uvd_pair()
    target["size"] = 32
    labels = heatmaps.gaussian_1d_targets(target["uvd"], 16, 32, variance=1.5 ** 2)  # (B, J, 3, 16)
    for tau in (1.0, 0.1):
        options = {"simcc_kl": 1.0, "kl_sigma": 1.5, "kl_tau": tau}
        _, parts = pose_loss(pred, {"logits1d": tau * labels.log()}, target, options)
        assert parts["simcc_kl"].item() == pytest.approx(0.0, abs=1e-5)
    shifted = labels.roll(3, dims=-1)
    _, parts = pose_loss(pred, {"logits1d": shifted.log()}, target, {"simcc_kl": 1.0, "kl_sigma": 1.5})
    assert parts["simcc_kl"].item() > 1.0


def test_simcc_kl_needs_the_logits():
    pred, target = uvd_pair()
    with pytest.raises(UserError, match="simcc_kl"):
        pose_loss(pred, {}, target, {"simcc_kl": 1.0})


# --- He 2021's 3D family ----------------------------------------------------------------------------------

@pytest.mark.parametrize("factor, expected", [
    (2.0, {"bone_length": 20 * 0.1, "bone_direction": 0.0, "bone_cosine": 0.0}),
    (-1.0, {"bone_length": 0.0, "bone_direction": 20 * 2.0, "bone_cosine": 2.0}),
])
def test_bone_terms_of_a_scaled_and_a_mirrored_skeleton(factor, expected):
    """Scaled by 2: each bone 0.1 too long, directions kept; point-mirrored about the root: lengths kept,
    every direction reversed (|u - (-u)| = 2, cos = -1)."""
    xyz = skeleton()[None]
    target = target_for(xyz)
    pred = xyz_to_uvd(about_root(xyz, factor), K)
    weights = {name: 3.0 for name in expected}
    total, parts = pose_loss(pred, {}, target, weights)
    for name, value in expected.items():
        assert parts[name].item() == pytest.approx(value, abs=1e-4), name
    assert total.item() == pytest.approx(3.0 * sum(expected.values()), abs=1e-3)


def test_pose_l2_is_root_relative_and_in_units_of_the_depth_range():
    """Sample 0: the whole hand shifted 3 cm (no loss); sample 1: one fingertip moved 3 cm = 0.2 units,
    0.04 squared; mean over the batch 0.02."""
    xyz = skeleton()[None].repeat(2, 1, 1)
    moved = xyz.clone()
    moved[0] += torch.tensor([0.03, 0.0, 0.0])
    moved[1, 20] += torch.tensor([0.0, 0.03, 0.0])
    target = target_for(xyz)
    target["root_depth"] = moved[:, ROOT_JOINT, 2]
    _, parts = pose_loss(xyz_to_uvd(moved, K), {}, target, {"pose_l2": 1.0})
    assert parts["pose_l2"].item() == pytest.approx(0.02, rel=1e-4)
    assert 0.03 / DEPTH_RANGE_M == pytest.approx(0.2)


def test_asm_of_a_batch_in_its_own_span_is_the_plain_l2():
    """5 poses: 4 components span them and no coefficient reaches 3 sqrt(lambda) (at most 2 sqrt(lambda) with
    5 samples), so the ASM target is the ground truth: the same 0.04 / 5 as pose_l2."""
    torch.manual_seed(0)
    xyz = skeleton()[None] + 0.01 * torch.randn(5, 21, 3)
    moved = xyz.clone()
    moved[0, 20] += torch.tensor([0.0, 0.0, 0.03])
    target = target_for(xyz)
    _, parts = pose_loss(xyz_to_uvd(moved, K), {}, target, {"asm": 1.0, "pose_l2": 1.0})
    assert parts["asm"].item() == pytest.approx(0.04 / 5, rel=1e-3)
    assert parts["asm"].item() == pytest.approx(parts["pose_l2"].item(), rel=1e-4)


def test_asm_clamps_an_outlier():
    """19 zero poses and one at 100 along one axis: mean 5, centred 95 and -5; lambda = (95^2 + 19 * 5^2) / 19
    = 500; the outlier is clamped to 5 + 3 sqrt(500) = 72.08, the others kept. L = (100 - 72.08)^2 / 20."""
    true = torch.zeros(20, 21, 3)
    true[0, 4, 1] = 100.0
    asm_true = losses.asm_target(true, 10)
    assert asm_true[0, 4, 1].item() == pytest.approx(5 + 3 * math.sqrt(500), rel=1e-5)
    assert torch.allclose(asm_true[1:], true[1:], atol=1e-4)
    expected = (100 - 5 - 3 * math.sqrt(500)) ** 2 / 20
    assert losses.asm(true, true, 10).item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("decay, factor", [("linear", 0.75), ("cosine", (1 + math.cos(math.pi / 4)) / 2)])
def test_asm_weight_decays_over_training(decay, factor):
    xyz = skeleton()[None] + 0.01 * torch.randn(3, 21, 3)
    target = target_for(xyz)
    pred = xyz_to_uvd(about_root(xyz, 1.5), K)
    total, parts = pose_loss(pred, {}, target, {"asm": 2.0, "asm_decay": decay}, progress=0.25)
    assert total.item() == pytest.approx(2.0 * factor * parts["asm"].item(), rel=1e-5)
    end, _ = pose_loss(pred, {}, target, {"asm": 2.0, "asm_decay": decay}, progress=1.0)
    assert end.item() == pytest.approx(0.0, abs=1e-6)


# --- the combined loss -------------------------------------------------------------------------------------

def test_parts_are_detached_and_zero_weights_skipped():
    pred, target = uvd_pair()
    pred.requires_grad_(True)
    total, parts = pose_loss(pred, {}, target, {"coord_l1": 1.0, "coord_mse": 0.0})
    assert set(parts) == {"coord_l1"} and not parts["coord_l1"].requires_grad
    total.backward()
    assert pred.grad is not None


def test_loss_configuration_errors():
    pred, target = uvd_pair()
    with pytest.raises(UserError, match="unknown loss keys.*coord_l3"):
        pose_loss(pred, {}, target, {"coord_l3": 1.0})
    with pytest.raises(UserError, match="heatmaps2d"):
        pose_loss(pred, {}, target, {"heatmap2d": 1.0})
    with pytest.raises(UserError, match="no loss term"):
        pose_loss(pred, {}, target, {"coord_l1": 0.0})
    with pytest.raises(UserError, match="asm_decay"):
        pose_loss(pred, {}, target, {"asm": 1.0, "asm_decay": "step"})
