import numpy as np
import pytest
import torch
from PIL import Image

from core import geometry
from core.geometry import BONES
from data.joints import REFERENCE_BONES_MM, bone_lengths
from tests.hands import synthetic_hands
from tests.markers import label_errors, make_sample


@pytest.fixture
def hand():
    rng = np.random.default_rng(0)
    K = np.array([[520.0, 0, 101.5], [0, 515.0, 123.0], [0, 0, 1]])
    xyz = np.array([0.02, -0.01, 0.6]) + rng.normal(scale=0.04, size=(21, 3))
    return K, xyz


def test_project_unproject_round_trip(hand):
    K, xyz = hand
    uv = geometry.project(xyz, K)
    np.testing.assert_allclose(geometry.unproject(uv, xyz[:, 2], K), xyz, atol=1e-12)
    # torch gives the same numbers
    uv_t = geometry.project(torch.tensor(xyz), torch.tensor(K))
    np.testing.assert_allclose(uv_t.numpy(), uv, atol=1e-9)


def test_project_matches_pinhole_formula(hand):
    K, xyz = hand
    uv = geometry.project(xyz, K)
    np.testing.assert_allclose(uv[:, 0], K[0, 0] * xyz[:, 0] / xyz[:, 2] + K[0, 2])
    np.testing.assert_allclose(uv[:, 1], K[1, 1] * xyz[:, 1] / xyz[:, 2] + K[1, 2])


def test_uvd_round_trip_with_true_root_depth(hand):
    K, xyz = hand
    uvd = geometry.xyz_to_uvd(xyz, K)
    assert uvd[geometry.ROOT_JOINT, 2] == 0
    back = geometry.uvd_to_xyz(uvd, K, xyz[geometry.ROOT_JOINT, 2])
    np.testing.assert_allclose(back, xyz, atol=1e-12)


def test_root_depth_from_bone_recovers_the_depth(hand):
    K, xyz = hand
    uvd = geometry.xyz_to_uvd(xyz, K)
    depth = geometry.root_depth_from_bone(uvd, K, geometry.bone_length(xyz))
    assert depth == pytest.approx(xyz[geometry.ROOT_JOINT, 2], abs=1e-9)
    # batched, torch
    uvd_b = torch.tensor(np.stack([uvd, uvd]))
    K_b = torch.tensor(np.stack([K, K]))
    depth_b = geometry.root_depth_from_bone(uvd_b, K_b, torch.tensor([geometry.bone_length(xyz)] * 2))
    np.testing.assert_allclose(depth_b.numpy(), xyz[geometry.ROOT_JOINT, 2], atol=1e-9)


def test_root_depth_gives_the_bone_its_length(hand):
    """For other bone lengths the recovered depth still makes the bone exactly that long, further for longer."""
    K, xyz = hand
    uvd = geometry.xyz_to_uvd(xyz, K)
    true_length = geometry.bone_length(xyz)
    depths = []
    for length in (1.2 * true_length, 2.0 * true_length):
        depth = geometry.root_depth_from_bone(uvd, K, length)
        assert geometry.bone_length(geometry.uvd_to_xyz(uvd, K, depth)) == pytest.approx(length, rel=1e-9)
        depths.append(depth)
    assert xyz[geometry.ROOT_JOINT, 2] < depths[0] < depths[1]


def test_affines_compose_and_invert():
    A = geometry.crop_resize_affine((10, -4, 200), 128)
    B = geometry.rotation_affine(torch.tensor([33.0]), 128, scale=1.2, translate=(3.0, -5.0))[0].double().numpy()
    uv = np.random.default_rng(1).uniform(0, 128, size=(21, 2))
    np.testing.assert_allclose(geometry.apply_affine(geometry.compose_affine(B, A), uv),
                               geometry.apply_affine(B, geometry.apply_affine(A, uv)), atol=1e-9)
    np.testing.assert_allclose(geometry.apply_affine(geometry.invert_affine(A), geometry.apply_affine(A, uv)),
                               uv, atol=1e-9)


def test_transform_K_agrees_with_moving_the_projection(hand):
    K, xyz = hand
    A = geometry.compose_affine(geometry.rotation_affine(torch.tensor([70.0]), 128)[0].double().numpy(),
                                geometry.crop_resize_affine((0, 0, 224), 128))
    np.testing.assert_allclose(geometry.project(xyz, geometry.transform_K(A, K)),
                               geometry.apply_affine(A, geometry.project(xyz, K)), atol=1e-9)


def test_rotation_affine_matches_kornia():
    from kornia.geometry.transform import get_rotation_matrix2d
    angle, size = torch.tensor([25.0, -140.0]), 96
    ours = geometry.rotation_affine(angle, size, scale=torch.tensor([1.0, 0.7]))
    centre = torch.full((2, 2), (size - 1) / 2)
    theirs = get_rotation_matrix2d(centre, angle, torch.tensor([[1.0, 1.0], [0.7, 0.7]]))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_rotation_about_centre_keeps_centre_and_turns_counter_clockwise_on_screen():
    A = geometry.rotation_affine(torch.tensor([90.0]), 101)[0]
    c = 50.0
    assert torch.allclose(geometry.apply_affine(A, torch.tensor([[c, c]])), torch.tensor([[c, c]]), atol=1e-4)
    # a point right of the centre moves to above it (smaller v) under a counter-clockwise turn on screen
    moved = geometry.apply_affine(A, torch.tensor([[c + 10, c]]))[0]
    assert torch.allclose(moved, torch.tensor([c, c - 10]), atol=1e-4)


def test_normalize_uvd_round_trip_and_edges():
    uvd = torch.tensor([[[-0.5, 127.5, 0.3]]])
    n = geometry.normalize_uvd(uvd, 128)
    torch.testing.assert_close(n, torch.tensor([[[-1.0, 1.0, 0.3]]]))
    torch.testing.assert_close(geometry.denormalize_uvd(n, 128), uvd)


def test_heatmap_bin_centres_cover_the_input():
    centres = geometry.heatmap_bin_centres(4, 8)
    torch.testing.assert_close(centres, torch.tensor([0.5, 2.5, 4.5, 6.5]))
    assert geometry.depth_bin_centres(2).tolist() == [-0.5, 0.5]


@pytest.mark.parametrize("size", [(224, 224), (256, 192), (180, 240)])
@pytest.mark.parametrize("target", [128, 224, 300])
def test_resize_affine_keeps_labels_on_the_pixels(tmp_path, size, target):
    """Decode + fit-to-square resize of a marker image: the codec's affine puts every label on its mark."""
    from data.decoding import decode_image
    image, _mask, K, xyz = make_sample(np.random.default_rng(sum(size) + target), *size)
    path = tmp_path / "m.png"
    Image.fromarray(image).save(path)
    pixels, affine = decode_image(path, target)
    uv = geometry.project(xyz, geometry.transform_K(affine, K))
    errors = label_errors(uv, pixels)
    assert np.median(errors) < 0.3 and errors.max() < 0.6, errors


def test_uvd_to_xyz_by_bone_recovers_the_hand(hand):
    K, xyz = hand
    uvd = geometry.xyz_to_uvd(xyz, K)
    back = geometry.uvd_to_xyz(uvd, K, geometry.root_depth_from_bone(uvd, K, geometry.bone_length(xyz)))
    np.testing.assert_allclose(back, xyz, atol=1e-9)


# --- root depth over every bone -------------------------------------------------------------------------------

def solve_bones(uvd, K, lengths, weights=None):
    weights = np.ones_like(lengths) if weights is None else weights
    return geometry.root_depth_from_bones(uvd, K, BONES, lengths, weights, (0.1, 4.0))


def test_root_depth_from_bones_is_exact_on_labels():
    xyz, K = synthetic_hands(40)
    uvd = geometry.xyz_to_uvd(xyz, K)
    depth, undetermined = solve_bones(uvd, K, bone_lengths(xyz), np.random.default_rng(1).uniform(0.1, 2, (40, 20)))
    np.testing.assert_allclose(depth, xyz[:, geometry.ROOT_JOINT, 2], atol=1e-6)
    assert not undetermined.any()
    np.testing.assert_allclose(geometry.uvd_to_xyz(uvd, K, depth), xyz, atol=1e-6)


def test_a_scale_bone_along_the_viewing_ray_does_not_throw_the_depth():
    """The scale bone's PIP put on the ray of its MCP, 3 cm behind: its image length is nil, so one bone gives
    no depth (or any depth, with a little noise); every bone still gives the true one."""
    xyz, K = synthetic_hands(1, seed=3)
    n, m = geometry.SCALE_BONE
    xyz[0, m] = xyz[0, n] * (1.0 + 0.03 / xyz[0, n, 2])
    uvd = geometry.xyz_to_uvd(xyz, K)
    lengths = bone_lengths(xyz)                    # column 9: the scale bone
    with np.errstate(divide="ignore", invalid="ignore"):
        assert not np.isfinite(geometry.root_depth_from_bone(uvd, K, lengths[:, 9])).all()
    np.testing.assert_allclose(solve_bones(uvd, K, lengths)[0], xyz[:, geometry.ROOT_JOINT, 2], atol=1e-6)
    uvd[0, m, :2] += 0.3   # a third of a pixel off
    one_bone = geometry.root_depth_from_bone(uvd, K, lengths[:, 9])
    all_bones = solve_bones(uvd, K, lengths)[0]
    assert abs(one_bone[0] - xyz[0, geometry.ROOT_JOINT, 2]) > 0.2
    assert abs(all_bones[0] - xyz[0, geometry.ROOT_JOINT, 2]) < 0.01


def test_root_depth_from_bones_under_a_trained_models_noise():
    """2 px of noise per coordinate at a 64 px input and 1 cm in relative depth, only the scale bone's length
    known and the others expected from the reference hand's proportions: no hand lands far off, unlike with
    one bone."""
    xyz, K = synthetic_hands(200, seed=5)
    rng = np.random.default_rng(6)
    uvd = geometry.xyz_to_uvd(xyz, K)
    uvd[..., :2] += rng.normal(0.0, 2.0, uvd[..., :2].shape)
    uvd[..., 2] += rng.normal(0.0, 0.01, uvd[..., 2].shape) / geometry.DEPTH_RANGE_M
    scale = geometry.bone_length(xyz)
    lengths = scale[:, None] * REFERENCE_BONES_MM / REFERENCE_BONES_MM[9]
    error = np.abs(solve_bones(uvd, K, lengths)[0] - xyz[:, geometry.ROOT_JOINT, 2])
    one_bone = np.abs(geometry.root_depth_from_bone(uvd, K, scale) - xyz[:, geometry.ROOT_JOINT, 2])
    assert error.max() < 0.5 and np.median(error) < 0.12
    assert np.sum(one_bone > 0.5) >= 10 and error.mean() < 0.5 * one_bone.mean()


def test_root_depth_from_bones_stays_in_its_bracket_and_knows_when_it_cannot_tell():
    xyz, K = synthetic_hands(2, seed=7)
    uvd = geometry.xyz_to_uvd(xyz, K)
    uvd[1, :, :2] = uvd[1, 0, :2]                  # every joint on one ray: any depth fits as well as another
    depth, undetermined = solve_bones(uvd, K, 100.0 * bone_lengths(xyz))   # bones a hundred times too long
    assert depth[0] == 4.0 and list(undetermined) == [False, True]
