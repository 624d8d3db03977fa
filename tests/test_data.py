import json
import subprocess
import sys

import numpy as np
import pytest

from core import geometry
from core.common import PROJECT_ROOT, UserError
from data import joints, resolve_or_generate_data_root, synthetic
from data.dataset import HandDataset
from data.derived import derived_folder
from data.readers import VAL_SPLIT_FILE, detect_layout, load_split
from tests.markers import label_errors, write_marker_dataset


@pytest.fixture(scope="module")
def freihand_markers(tmp_path_factory):
    return write_marker_dataset(tmp_path_factory.mktemp("fh"), n=40, versions=1, seed=5)


def test_detects_both_layouts(marker_set, tmp_path):
    assert detect_layout(marker_set) == "freihand"
    assert detect_layout(write_marker_dataset(tmp_path / "b", n=2, layout="mp21")) == "mp21"
    assert detect_layout(tmp_path) is None


@pytest.mark.parametrize("img_size", [128, 224])
def test_labels_sit_on_the_marks_in_returned_pixels(freihand_markers, img_size):
    """A FreiHAND-layout folder with per-sample off-centre K: the loader's uvd lands on each joint's mark."""
    dataset = HandDataset(load_split(freihand_markers, "train"), img_size)
    errors = []
    for i in range(len(dataset)):
        sample = dataset[i]
        assert sample["image"].shape == (3, img_size, img_size) and sample["image"].dtype.is_floating_point is False
        image = sample["image"].permute(1, 2, 0).numpy()
        errors.append(label_errors(sample["uvd"][:, :2].numpy(), image))
        # K of the input projects xyz to the same uv
        np.testing.assert_allclose(geometry.project(sample["xyz"].double(), sample["K"].double()).numpy(),
                                   sample["uvd"][:, :2].numpy(), atol=1e-3)
    errors = np.concatenate(errors)
    assert np.median(errors) < 0.5 and np.percentile(errors, 95) < 1.0, (np.median(errors), errors.max())


def test_mask_is_returned_and_covers_the_marks(freihand_markers):
    sample = HandDataset(load_split(freihand_markers, "train"), 128)[0]
    assert sample["has_mask"] and sample["mask"].dtype == __import__("torch").uint8
    u, v = sample["uvd"][:, :2].round().long().T
    assert sample["mask"][v, u].all()


def test_val_split_is_by_annotation_saved_and_reused(tmp_path):
    root = write_marker_dataset(tmp_path, n=40, versions=4, seed=2)
    train, val = load_split(root, "train"), load_split(root, "val")
    assert len(train) + len(val) == 160 and len(val) == 4 * 2  # 5 % of 40 annotations, all 4 versions
    assert not set(train.ann_ids) & set(val.ann_ids)
    assert not (root / VAL_SPLIT_FILE).exists()  # never written into the data root
    path = derived_folder(root) / VAL_SPLIT_FILE
    saved = json.loads(path.read_text())
    assert sorted(saved["val_ann_ids"]) == sorted(set(val.ann_ids.tolist()))
    saved["val_ann_ids"] = [0, 1]
    path.write_text(json.dumps(saved))
    assert sorted(set(load_split(root, "val").ann_ids.tolist())) == [0, 1]  # reused, not re-drawn


def test_versions_map_to_annotations_and_masks_only_version_zero(tmp_path):
    root = write_marker_dataset(tmp_path, n=10, versions=4, seed=3)
    split = load_split(root, "train")
    np.testing.assert_array_equal(split.ann_ids, split.image_ids % 10)
    for image_id, mask in zip(split.image_ids, split.mask_paths):
        assert (mask is not None) == (image_id < 10)
    sample = HandDataset(split, 64)[int(np.flatnonzero(split.image_ids >= 10)[0])]
    assert not sample["has_mask"] and sample["mask"].sum() == 0


def test_mp21_layout_loads_with_its_splits(tmp_path):
    root = write_marker_dataset(tmp_path, n=6, layout="mp21", n_eval=3)
    assert len(load_split(root, "train")) == 6 and load_split(root, "val").labelled
    test = load_split(root, "test")
    assert len(test) == 3 and not test.labelled and test.mask_paths is None
    sample = HandDataset(test, 96)[2]
    assert "xyz" not in sample and np.isnan(sample["bone_length"].item())
    assert load_split(root, "evaluation").name == "test"


def test_evaluation_split_has_scale_and_labels(freihand_markers):
    split = load_split(freihand_markers, "evaluation")
    assert len(split) == 3 and split.labelled
    np.testing.assert_allclose(split.scale, geometry.bone_length(split.xyz))


def test_joint_orders_round_trip_and_known_positions():
    xyz = np.random.default_rng(0).normal(size=(4, 21, 3))
    for order in joints.ORDERS:
        np.testing.assert_array_equal(joints.to_freihand(joints.from_freihand(xyz, order), order), xyz)
    mano = joints.from_freihand(xyz, "mano")
    np.testing.assert_array_equal(mano[:, 1], xyz[:, 5])    # index MCP first after the root
    np.testing.assert_array_equal(mano[:, 17:], xyz[:, 1:5])  # thumb last
    ait = joints.from_freihand(xyz, "ait")
    np.testing.assert_array_equal(ait[:, 1:6], xyz[:, [1, 5, 9, 13, 17]])  # the five MCPs, thumb to pinky
    np.testing.assert_array_equal(ait[:, 16:], xyz[:, [4, 8, 12, 16, 20]])  # the five tips


def test_ait_is_exactly_the_course_templates_order():
    """Root, the MCPs, PIPs, DIPs and tips, each thumb to pinky (JointInfo: root 0, thumb_mcp 1, index_mcp 2, ...,
    pinky_tip 20), the FreiHAND index of each slot written out."""
    mcp, pip, dip, tip = [1, 5, 9, 13, 17], [2, 6, 10, 14, 18], [3, 7, 11, 15, 19], [4, 8, 12, 16, 20]
    assert joints.ORDERS["ait"].tolist() == [0, *mcp, *pip, *dip, *tip]
    assert joints.ORDERS["mano"].tolist() == [0, 5, 6, 7, 8, 9, 10, 11, 12, 17, 18, 19, 20, 13, 14, 15, 16, 1, 2, 3, 4]


# --- recognising a joint order from the bones ------------------------------------------------------------

def synthetic_hands(count, seed=0):
    """(count, 21, 3) metres, FreiHAND order: random right hands of the synthetic generator, turned to random views
    0.6 m in front of the camera."""
    rng = np.random.default_rng(seed)
    return np.stack([synthetic.sample_hand(rng)[0] @ synthetic.sample_view(rng).T + [0.0, 0.0, 0.6]
                     for _ in range(count)])


def test_reference_bones_are_the_synthetic_generators_mean_hand():
    mean = joints.bone_lengths(synthetic_hands(400)).mean(0) * 1000.0
    np.testing.assert_allclose(mean, joints.REFERENCE_BONES_MM, rtol=0.04)


@pytest.mark.parametrize("order", list(joints.ORDERS))
def test_detect_order_recognises_every_order_of_hands_even_single_ones(order):
    hands = synthetic_hands(30, seed=1)
    found, misfits = joints.detect_order(joints.from_freihand(hands, order))
    assert found == order and misfits[order] < 0.1
    assert all(joints.detect_order(joints.from_freihand(hand[None], order))[0] == order for hand in hands[:5])


@pytest.mark.parametrize("order", list(joints.ORDERS))
def test_detect_order_recognises_a_weak_models_noisy_mean_hands(order):
    """One mean hand shape in each hand's view, shrunk fingers and all, plus 10 mm of noise per coordinate; and the
    same hands with their proportions off by up to 15 % (a dataset whose hands differ from the reference)."""
    rng = np.random.default_rng(2)
    shapes = np.stack([synthetic.sample_hand(rng)[0] for _ in range(200)])
    views = np.stack([synthetic.sample_view(rng) for _ in range(200)])
    mean_hands = np.einsum("nij,kj->nki", views, shapes.mean(0)) + [0.0, 0.0, 0.6]
    noisy = mean_hands + rng.normal(0.0, 0.010, mean_hands.shape)
    assert joints.detect_order(joints.from_freihand(noisy, order))[0] == order
    stretched = shapes * rng.uniform(0.85, 1.15, (1, 21, 1))
    assert joints.detect_order(joints.from_freihand(stretched @ views[0].T, order))[0] == order


def test_detect_order_claims_no_order_for_points_that_form_no_hand():
    rng = np.random.default_rng(3)
    for count in (1, 3, 20, 200):
        assert joints.detect_order(rng.normal(0.0, 0.03, (count, 21, 3)))[0] is None
        assert joints.detect_order(rng.normal(0.0, 0.03, (21, 3)) + rng.normal(0.0, 0.003, (count, 21, 3)))[0] is None
    found, misfits = joints.detect_order(np.zeros((4, 21, 3)))              # an untrained model: one point
    assert found is None and set(misfits.values()) == {np.inf}


# --- bad input: one clear line naming the file and the fix ---------------------------------------------

def _error(root, split="train"):
    with pytest.raises(UserError) as info:
        split = load_split(root, split)
        for i in range(len(split)):
            HandDataset(split, 64)[i]
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_dataset_is_a_clear_error(tmp_path):
    assert "no dataset at" in _error(tmp_path) and "training_K.json" in _error(tmp_path)
    with pytest.raises(UserError, match="no dataset at"):
        resolve_or_generate_data_root(tmp_path / "nowhere")


def test_partial_dataset_is_a_clear_error(marker_set, copy_of):
    root = copy_of(marker_set)
    (root / "training/rgb/00000001.jpg").unlink()  # 3 images for 4 annotations, the second one gone
    message = _error(root)
    assert "00000001.jpg" in message and "missing" in message


def test_image_count_not_a_multiple_is_a_clear_error(marker_set, copy_of):
    root = copy_of(marker_set)
    (root / "training/rgb/00000003.jpg").unlink()  # 3 images for 4 annotations
    message = _error(root)
    assert "not a multiple" in message and "training_K.json" in message


def test_length_mismatch_is_a_clear_error(marker_set, copy_of):
    root = copy_of(marker_set)
    xyz = json.loads((root / "training_xyz.json").read_text())
    (root / "training_xyz.json").write_text(json.dumps(xyz[:3]))  # 3 entries for 4 K
    message = _error(root)
    assert "training_xyz.json" in message and "3 entries" in message and "4" in message


def test_corrupt_jpeg_is_a_clear_error(marker_set, copy_of):
    root = copy_of(marker_set)
    path = root / "training/rgb/00000001.jpg"
    path.write_bytes(path.read_bytes()[:300])
    message = _error(root)
    assert "00000001.jpg" in message and "cannot decode" in message


@pytest.mark.slow
def test_scripts_print_one_line_for_a_missing_dataset(tmp_path):
    """The CLI wrapper: a user error is one line on stderr and exit status 2, no traceback."""
    code = ("import sys; from core.common import cli; from data.readers import load_split\n"
            f"cli(lambda: load_split({str(tmp_path)!r}, 'train'))()")
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("error: no dataset at") and result.stderr.count("\n") == 1
