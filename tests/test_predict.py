"""predict.py: rotation TTA through the inverse affines, upload files, --check, local scores, pictures, every arch
through the command line, and one-line errors that leave no partial file behind."""
import gzip
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from core import geometry
from prediction import inference
from scoring import metrics
import models
import predict
from scoring.report import report_scores
from uploads import upload_files
from uploads.check import check_file
from uploads.kinds import FORMATS
from uploads.records import load_predictions
from uploads.upload_files import read_freihand_zip, read_mp21_json_gz
from uploads.writing import write_outputs
from training.setup import training_stats
from models.checkpoints import load_checkpoint
from training.checkpoints import save_checkpoint
from core.common import PROJECT_ROOT, UserError
from data.joints import ORDERS, bone_lengths, bone_ratios, to_freihand
from data.readers import load_split
from tests.checkpoints import IMG_SIZE, write_checkpoint
from tests.markers import MARKER_SIZE, find_marks, marker_batch, write_marker_dataset
from tests.scripts import assert_one_line_error, leftovers, run_predict

# --- test doubles and helpers ----------------------------------------------------------------------------------

class CentroidNet(torch.nn.Module):
    """A rotation-equivariant stand-in model: joint j's (u, v) is the centroid of the image brightness raised to
    the power 1 + j / 10 (joint 0: the plain intensity centroid), its d the mean brightness times 1 + j / 10,
    which a rotation that keeps the content inside the frame leaves unchanged."""

    def __init__(self):
        super().__init__()
        self.register_buffer("powers", 1.0 + torch.arange(21, dtype=torch.float32) / 10.0)

    def forward(self, x):
        mean = torch.tensor(models.registry.IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(models.registry.IMAGENET_STD).view(1, 3, 1, 1)
        brightness = (x * std + mean).mean(1).clamp(0, 1)                        # (B, S, S) in [0, 1]
        weight = brightness[:, None] ** self.powers[None, :, None, None]         # (B, 21, S, S)
        size = x.shape[-1]
        grid = torch.arange(size, dtype=torch.float32)
        total = weight.sum((-2, -1))
        u = (weight * grid.view(1, 1, 1, size)).sum((-2, -1)) / total
        v = (weight * grid.view(1, 1, size, 1)).sum((-2, -1)) / total
        d = brightness.mean((-2, -1))[:, None] * self.powers                     # (B, 21)
        return torch.stack([u, v, d], -1)                                        # (B, 21, 3)


class ConstantNet(torch.nn.Module):
    """Predicts the same uvd whatever the image: not equivariant at all."""

    def forward(self, x):
        uvd = torch.tensor([10.0, 20.0, 0.3]).expand(x.shape[0], 21, 3)
        return uvd + torch.arange(21.0).view(1, 21, 1) * torch.tensor([1.0, 0.5, 0.0])


@pytest.fixture(scope="module")
def ghost_ckpt(marker_set, tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("runs") / "ghost_run" / "best.pt", "ghost_lite", marker_set)


def random_hands(n, seed=0):
    """(n, 21, 3) metres: plausible hands about 0.6 m in front of the camera."""
    rng = np.random.default_rng(seed)
    return rng.normal(0, 0.03, (n, 21, 3)) + np.array([0.0, 0.0, 0.6])


def record_of(xyz, ids=None, split="evaluation"):
    return {"xyz": xyz, "ids": np.arange(len(xyz)) if ids is None else np.asarray(ids), "split": split,
            "layout": "freihand"}


# The course template's AIT order, written out here from its definition: slot k holds FreiHAND joint COURSE_AIT[k]:
# the root (wrist 0), the five MCPs (thumb 1, index 5, middle 9, ring 13, pinky 17), the five PIPs (2, 6, 10, 14, 18),
# the five DIPs (3, 7, 11, 15, 19) and the five tips (4, 8, 12, 16, 20), each thumb to pinky.
COURSE_AIT = [0, 1, 5, 9, 13, 17, 2, 6, 10, 14, 18, 3, 7, 11, 15, 19, 4, 8, 12, 16, 20]


def procrustes(source, target, scale=True):
    """``source`` (21, 3) aligned onto ``target`` (21, 3) by translation, rotation (reflections corrected) and,
    optionally, scale: least squares, by the SVD of the cross-covariance. Written here, independent of metrics.py."""
    s0, t0 = source - source.mean(0), target - target.mean(0)
    u, sigma, vt = np.linalg.svd(s0.T @ t0)
    d = np.array([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])               # no reflection
    factor = (sigma * d).sum() / (s0 ** 2).sum() if scale else 1.0
    return factor * s0 @ ((u * d) @ vt) + target.mean(0)


def course_pa_mpjpe_mm(pred, gt):
    """The course metric: each prediction aligned onto its ground truth with scale, reflections corrected, then the
    mean joint distance, slot against slot; both (N, 21, 3) millimetres. The mean over samples, mm."""
    return float(np.mean([np.linalg.norm(procrustes(p, g) - g, axis=1).mean() for p, g in zip(pred, gt)]))


def read_upload(path):
    with gzip.open(path, "rt") as f:
        return np.array(json.load(f))


def imperfect_predictions(labels, sigma_m=0.008, seed=0):
    """What a weak model predicts: one mean hand shape (the labels' Procrustes mean) turned and moved onto each
    label, plus independent noise of ``sigma_m`` per coordinate. (N, 21, 3) metres, FreiHAND order."""
    mean = labels[0]
    for _ in range(3):
        mean = np.mean([procrustes(hand, mean, scale=False) for hand in labels], 0)
    placed = np.stack([procrustes(mean, hand, scale=False) for hand in labels])
    return placed + np.random.default_rng(seed).normal(0.0, sigma_m, labels.shape)


# --- TTA: the inverse transforms -------------------------------------------------------------------------------

def test_tta_of_an_equivariant_model_is_the_plain_prediction_exactly_at_right_angles():
    """4 rotations by multiples of 90 degrees move pixel centres onto pixel centres: no interpolation, so the
    mapped-back predictions equal the plain one to float precision."""
    images, _ = marker_batch()
    model = CentroidNet()
    plain = inference.predict_batch(model, images, tta=1)
    tta4 = inference.predict_batch(model, images, tta=4)
    assert torch.allclose(tta4, plain, atol=2e-3), (tta4 - plain).abs().max()


def test_tta_over_10_rotations_returns_the_plain_prediction():
    """36 degree steps interpolate the pixels; the blobs are smooth, so the result stays within 0.05 px."""
    images, _ = marker_batch()
    model = CentroidNet()
    plain = inference.predict_batch(model, images, tta=1)
    tta10 = inference.predict_batch(model, images, tta=10)
    assert (tta10[..., :2] - plain[..., :2]).abs().max() < 0.05
    assert (tta10[..., 2] - plain[..., 2]).abs().max() < 1e-3 * plain[..., 2].abs().max()


@pytest.mark.parametrize("tta", [1, 4, 10])
def test_tta_predictions_sit_on_the_markers(tta):
    """The intensity centroid (joint 0) of the mapped-back TTA prediction is the mean of the marks' positions,
    as labelled and as found in the image: the averaged prediction lies in the unrotated image's pixels."""
    images, uv = marker_batch()
    centroid = inference.predict_batch(CentroidNet(), images, tta=tta)[:, 0, :2].numpy()
    found = np.stack([find_marks(image.permute(1, 2, 0).numpy()).mean(0) for image in images])
    assert np.abs(centroid - uv.mean(1)).max() < 0.1
    assert np.abs(centroid - found).max() < 0.1


def test_tta_of_a_constant_model_averages_to_the_input_centre():
    """Inverse rotations evenly spread over the circle average any fixed point to the centre of rotation."""
    images, _ = marker_batch(count=2)
    for tta in (2, 3, 10):
        uvd = inference.predict_batch(ConstantNet(), images, tta=tta)
        assert torch.allclose(uvd[..., :2], torch.full_like(uvd[..., :2], (MARKER_SIZE - 1) / 2), atol=1e-3)
        assert torch.allclose(uvd[..., 2], torch.full_like(uvd[..., 2], 0.3))


def test_tta_over_a_limited_range_sits_on_the_markers_and_spreads_its_angles_over_that_range():
    """A model trained on rotations up to 30 degrees is tested on rotations within that range: ten angles from
    -30 to 30, and the mapped-back prediction still lies on the marks of the unrotated image."""
    np.testing.assert_allclose(inference.tta_angles(10, 30.0).numpy(), np.linspace(-30.0, 30.0, 10), atol=1e-5)
    np.testing.assert_allclose(inference.tta_angles(4).numpy(), [0.0, 90.0, 180.0, 270.0])
    assert inference.tta_angles(1, 30.0).tolist() == [0.0]
    images, uv = marker_batch()
    centroid = inference.predict_batch(CentroidNet(), images, tta=10, max_deg=30.0)[:, 0, :2].numpy()
    assert np.abs(centroid - uv.mean(1)).max() < 0.1


def test_training_rotation_is_read_from_the_runs_config():
    assert inference.training_rotation({"augs": "rotate", "aug": {"rotate": {"max_deg": 30.0}}}) == 30.0
    assert inference.training_rotation({"augs": "rotate,color", "aug": {}}) == 180.0
    assert inference.training_rotation({"augs": "none", "augs_final": "rotate",
                                      "aug": {"rotate": {"max_deg": 45.0}}}) == 45.0
    assert inference.training_rotation({"augs": "color"}) == 180.0     # never rotated: the papers' full circle


def test_tta_with_many_rotations_runs_in_chunks_and_matches_one_forward(monkeypatch):
    """Any --tta runs at bounded memory: the rotations go through the model a few at a time, and the average is
    the one a single forward gives."""
    images, _ = marker_batch(count=2)
    whole = inference.predict_batch(CentroidNet(), images, tta=7)
    seen = []

    class Recording(CentroidNet):
        def forward(self, x):
            seen.append(x.shape[0])
            return super().forward(x)

    monkeypatch.setattr(inference, "TTA_IMAGES_PER_FORWARD", 4)
    chunked = inference.predict_batch(Recording(), images, tta=7)
    assert max(seen) <= 4 and sum(seen) == 2 * 7
    torch.testing.assert_close(chunked, whole, atol=1e-4, rtol=0)  # float32 sums in another order


def test_predict_loader_keeps_tta_equal_to_plain_over_batches():
    """The loader path: batches concatenated in order, K / ids / bone lengths passed through, TTA over 4 rotations
    equal to the plain uvd."""
    images, _ = marker_batch(count=4)
    K = torch.tensor([[300.0, 0, 80], [0, 300, 78], [0, 0, 1]]).expand(2, 3, 3)
    batches = [{"image": images[i:i + 2], "K": K, "id": torch.tensor([i, i + 1]) + 10,
                "bone_length": torch.tensor([0.03, float("nan")])} for i in (0, 2)]
    plain, tta4 = (inference.predict_loader(CentroidNet(), batches, torch.device("cpu"), tta=tta) for tta in (1, 4))
    np.testing.assert_allclose(tta4["uvd"], plain["uvd"], atol=2e-3)
    np.testing.assert_allclose(plain["uvd"][:2], inference.predict_batch(CentroidNet(), images[:2]).numpy(), atol=1e-6)
    np.testing.assert_array_equal(tta4["ids"], [10, 11, 12, 13])
    assert tta4["K"].shape == (4, 3, 3) and np.isnan(tta4["bone_length"][[1, 3]]).all() and tta4["xyz"] is None


# --- upload files ----------------------------------------------------------------------------------------------

def test_freihand_zip_holds_xyz_and_placeholder_verts(tmp_path):
    xyz = random_hands(5)
    npz, upload, _ = write_outputs(tmp_path / "sub", record_of(xyz), "freihand", "freihand")
    assert upload == tmp_path / "sub.zip" and npz == tmp_path / "sub.npz"
    with zipfile.ZipFile(upload) as archive:
        assert archive.namelist() == ["pred.json"]
        xyz_list, verts_list = json.loads(archive.read("pred.json"))
    assert len(xyz_list) == len(verts_list) == 5
    np.testing.assert_allclose(np.array(xyz_list), xyz, atol=1e-7)          # metres, evaluation order
    verts = np.array(verts_list)
    assert verts.shape == (5, 778, 3)
    np.testing.assert_allclose(verts, np.broadcast_to(xyz.mean(1, keepdims=True), verts.shape), atol=1e-7)
    record = load_predictions(npz)
    np.testing.assert_array_equal(record["xyz"], xyz)
    assert record["split"] == "evaluation" and list(record["ids"]) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("order", list(ORDERS))
def test_mp21_file_is_millimetres_in_the_joint_order_and_converts_back(tmp_path, order):
    xyz = random_hands(4, seed=1)
    _, upload, _ = write_outputs(tmp_path / "sub", record_of(xyz, split="test"), "mp21", order)
    assert upload == tmp_path / "sub" / "test_preds.json.gz"                # the course template's name
    with gzip.open(upload, "rt") as f:
        written = np.array(json.load(f))
    assert written.shape == (4, 21, 3)
    np.testing.assert_allclose(to_freihand(written / 1000.0, order), xyz, atol=1e-7)
    index_mcp = {"freihand": 5, "mano": 1, "ait": 2}[order]                 # FreiHAND joint 5 in each order
    np.testing.assert_allclose(written[:, index_mcp] / 1000.0, xyz[:, 5], atol=1e-7)
    np.testing.assert_allclose(read_mp21_json_gz(upload)[0], written)


@pytest.mark.parametrize("case, message", [
    ("nan", "NaN or inf"), ("shape", "expected (N, 21, 3)"), ("duplicate", "occurs 2 times"),
    ("count", "the split has 6 images"), ("ids", "row 2 is image id 7")])
def test_writers_refuse_bad_predictions_and_write_nothing(tmp_path, case, message):
    xyz, ids = random_hands(5), np.arange(5)
    expected = np.arange(6) if case == "count" else np.arange(5)
    if case == "nan":
        xyz[3, 4, 1] = np.nan
    if case == "shape":
        xyz = xyz[:, :20]
    if case == "duplicate":
        ids[4] = 0
    if case == "ids":
        ids[2] = 7
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        write_outputs(tmp_path / "sub", record_of(xyz, ids), "freihand", "freihand", expected_ids=expected)
    assert list(tmp_path.iterdir()) == []


def test_an_error_while_writing_leaves_no_partial_upload(tmp_path, monkeypatch):
    """The writer fails half-way (think: disk full): neither the zip nor its temp file remains; an earlier
    complete upload stays as it was."""
    (tmp_path / "sub.zip").write_bytes(b"an earlier, complete upload")

    def failing_chunks(xyz):
        yield "[[ half a file"
        raise OSError("No space left on device")

    monkeypatch.setattr(upload_files, "freihand_json_chunks", failing_chunks)
    with pytest.raises(OSError):
        write_outputs(tmp_path / "sub", record_of(random_hands(3)), "freihand", "freihand")
    assert (tmp_path / "sub.zip").read_bytes() == b"an earlier, complete upload"
    assert leftovers(tmp_path) == []


# --- --check ---------------------------------------------------------------------------------------------------

def write_zip(path, content, member="pred.json"):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(member, content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.mark.parametrize("case, message", [
    ("garbage", "not a readable zip file"), ("member", "not pred.json"), ("json", "not valid JSON"),
    ("structure", "[xyz_list, verts_list]"), ("shape", "shape (2, 20, 3)"), ("nan", "NaN or inf"),
    ("lengths", "2 xyz entries but 1 verts"), ("millimetres", "look like millimetres"),
    ("count", "2 samples, expected 3960")])
def test_check_says_what_is_wrong_with_a_freihand_zip(tmp_path, case, message):
    xyz, verts = random_hands(2).tolist(), np.full((2, 778, 3), 0.6).tolist()
    path = tmp_path / "pred.zip"
    if case == "garbage":
        path.write_bytes(b"PK\x03\x04 this is no zip")
    elif case == "member":
        write_zip(path, [xyz, verts], member="preds.json")
    elif case == "json":
        write_zip(path, "[[1, 2")
    elif case == "structure":
        write_zip(path, [xyz])
    elif case == "shape":
        write_zip(path, [np.array(xyz)[:, :20].tolist(), verts])
    elif case == "nan":
        xyz[1][4][2] = float("nan")  # json writes and reads it as NaN
        write_zip(path, [xyz, verts])
    elif case == "lengths":
        write_zip(path, [xyz, verts[:1]])
    elif case == "millimetres":
        write_zip(path, [(np.array(xyz) * 1000).tolist(), verts])
    else:
        write_zip(path, [xyz, verts])
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        check_file(path)


def test_check_accepts_complete_files_and_counts_against_the_data(tmp_path, marker_set):
    xyz = random_hands(3)
    write_outputs(tmp_path / "sub", {**record_of(xyz), "data_root": str(marker_set)}, "freihand", "freihand")
    assert check_file(tmp_path / "sub.zip", data_root=marker_set).startswith("OK: ")
    assert "3 predictions" in check_file(tmp_path / "sub.npz")        # its recorded data root and split
    with pytest.raises(UserError, match="expected 1 for the val split"):
        check_file(tmp_path / "sub.zip", data_root=marker_set, split_name="val")
    write_outputs(tmp_path / "mp", record_of(xyz, split="test"), "mp21")
    assert "mp21 upload, 3 samples" in check_file(tmp_path / "mp" / "test_preds.json.gz")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="not a .zip, .json.gz or .npz"):
        check_file(tmp_path / "notes.txt")


@pytest.mark.slow
def test_check_of_a_broken_zip_is_one_line_from_the_command_line(tmp_path):
    path = tmp_path / "pred.zip"
    path.write_bytes(b"not a zip at all")
    done = subprocess.run([sys.executable, "predict.py", "--check", str(path)], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert_one_line_error(done.returncode, done.stderr, "pred.zip", "not a readable zip file")


# --- joint orders: the MP21 upload as the course scores it ------------------------------------------------------

def test_the_course_metric_of_these_tests_is_invariant_to_similarity_and_corrects_reflections():
    hand = random_hands(1, seed=8)[0] * 1000.0
    turn = np.linalg.qr(np.random.default_rng(8).normal(size=(3, 3)))[0]
    turn *= np.sign(np.linalg.det(turn))                                     # a rotation
    assert course_pa_mpjpe_mm([2.5 * hand @ turn + [10.0, -4.0, 300.0]], [hand]) < 1e-9
    assert course_pa_mpjpe_mm([hand * [-1.0, 1.0, 1.0]], [hand]) > 5.0        # a mirror image is no match


def test_labels_written_as_mp21_with_the_defaults_score_zero_on_the_course_metric(hand_set, tmp_path, capsys):
    """The course's template turns the labels into AIT order (x 1000) and scores slot against slot: the labels
    written by the default writer score 0.000 mm, --check names the order it recognised."""
    split = load_split(hand_set, "evaluation")
    _, upload, notes = write_outputs(tmp_path / "labels", record_of(split.xyz, split.image_ids), "mp21")
    assert upload == tmp_path / "labels" / "test_preds.json.gz"
    assert f"{course_pa_mpjpe_mm(read_upload(upload), split.xyz[:, COURSE_AIT] * 1000.0):.3f}" == "0.000"
    assert notes == ["joints in ait order (recognised from the bones)"]
    code, out, err = run_predict(["--check", upload], capsys)
    assert code == 0, err
    assert out.startswith(f"OK: {upload}: mp21 upload, 12 samples") and "joints in ait order" in out


@pytest.mark.parametrize("order", ["mano", "freihand"])
def test_labels_written_in_another_order_score_badly_and_check_names_that_order(hand_set, tmp_path, capsys, order):
    split = load_split(hand_set, "evaluation")
    _, upload, _ = write_outputs(tmp_path / order, record_of(split.xyz, split.image_ids), "mp21", order)
    assert course_pa_mpjpe_mm(read_upload(upload), split.xyz[:, COURSE_AIT] * 1000.0) > 20.0
    code, _, err = run_predict(["--check", upload], capsys)
    assert_one_line_error(code, err, str(upload), f"the joints are in {order} order, not ait", "--joint-order ait")


@pytest.mark.parametrize("kind", ["labels", "imperfect"])
@pytest.mark.parametrize("written", list(ORDERS))
def test_check_accepts_the_expected_order_and_rejects_the_other_two(hand_set, tmp_path, kind, written):
    """Each order written (labels, or a weak model's noisy mean hands) and checked against each order."""
    split = load_split(hand_set, "evaluation")
    xyz = split.xyz if kind == "labels" else imperfect_predictions(split.xyz)
    _, upload, notes = write_outputs(tmp_path / "sub", record_of(xyz, split.image_ids), "mp21", written)
    assert notes[0].startswith(f"joints in {written} order")
    for expected in ORDERS:
        if expected == written:
            assert f"joints in {written} order" in check_file(upload, joint_order=expected)
        else:
            with pytest.raises(UserError, match=f"the joints are in {written} order, not {expected} "):
                check_file(upload, joint_order=expected)


@pytest.mark.parametrize("fmt", FORMATS)
def test_writers_refuse_predictions_that_are_not_in_freihand_order(hand_set, tmp_path, fmt):
    """Predictions already in AIT order (a model trained on the course's AIT labels, taken as FreiHAND order): no
    writer writes a file that --check would reject."""
    split = load_split(hand_set, "evaluation")
    in_ait = split.xyz[:, COURSE_AIT]
    with pytest.raises(UserError, match="in ait order, not freihand .*nothing was written"):
        write_outputs(tmp_path / "sub", record_of(in_ait, split.image_ids), fmt)
    assert list(tmp_path.iterdir()) == []


def test_npz_and_zip_checks_name_the_freihand_order_and_refuse_others(hand_set, tmp_path):
    split = load_split(hand_set, "evaluation")
    write_outputs(tmp_path / "sub", record_of(split.xyz, split.image_ids), "freihand")
    assert "joints in freihand order" in check_file(tmp_path / "sub.npz")
    assert "joints in freihand order" in check_file(tmp_path / "sub.zip", data_root=hand_set)
    with pytest.raises(UserError, match="is a freihand file, always in FreiHAND order"):
        check_file(tmp_path / "sub.zip", data_root=hand_set, joint_order="ait")
    np.savez(tmp_path / "mano.npz", xyz=split.xyz[:, ORDERS["mano"]], ids=split.image_ids, split="evaluation")
    with pytest.raises(UserError, match="in mano order, not freihand"):
        check_file(tmp_path / "mano.npz")


def test_check_reports_far_away_hands_as_implausible_depths_not_as_another_unit(hand_set, tmp_path):
    """An untrained model can put a hand hundreds of metres away: that is said as it is, in the writer's notes
    and by --check, for both formats; the files pass."""
    split = load_split(hand_set, "evaluation")
    far = split.xyz.copy()
    far[..., 2] += 312.0 - split.xyz[:, :1, 2]                                # every wrist 312 m away
    _, zip_path, zip_notes = write_outputs(tmp_path / "far", record_of(far, split.image_ids), "freihand")
    _, gz_path, gz_notes = write_outputs(tmp_path / "far", record_of(far, split.image_ids), "mp21")
    for text in ("\n".join(zip_notes), "\n".join(gz_notes), check_file(zip_path, data_root=hand_set),
                 check_file(gz_path)):
        assert "wrist depths up to 312 m (12 of 12 outside 0.05-5 m): implausible for a hand in front of a camera" \
            in text
        assert "look like" not in text


def test_check_of_the_upload_folder_checks_the_file_in_it_and_a_file_in_its_place_is_one_line(tmp_path):
    write_outputs(tmp_path / "sub", record_of(random_hands(3), split="test"), "mp21")
    assert check_file(tmp_path / "sub").startswith(f"OK: {tmp_path / 'sub' / 'test_preds.json.gz'}: mp21")
    (tmp_path / "taken").write_text("a file where the upload's folder goes")
    with pytest.raises(UserError, match="taken is a file where the upload's folder should be"):
        write_outputs(tmp_path / "taken", record_of(random_hands(3), split="test"), "mp21")


def test_check_still_catches_an_mp21_file_in_metres(hand_set, tmp_path):
    split = load_split(hand_set, "evaluation")
    path = tmp_path / "test_preds.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump(split.xyz[:, COURSE_AIT].tolist(), f)
    with pytest.raises(UserError, match="the hands look like metres .*the course wants millimetres"):
        check_file(path)


# --- scores -----------------------------------------------------------------------------------------------------

def test_scores_offer_both_reflection_variants_and_the_constant_shape_baseline(tmp_path, said):
    gt = random_hands(6, seed=2)
    mirrored = gt * np.array([-1.0, 1.0, 1.0])
    shape = metrics.generalized_procrustes_mean(random_hands(20, seed=3))
    path = report_scores(tmp_path / "sub", mirrored, gt, shape, {"tta": 1})
    scores = json.loads(path.read_text())
    allowed, corrected = scores["reflections_allowed"], scores["reflections_corrected"]
    assert allowed["pa_mpjpe_mm"] < 1e-6
    assert corrected["pa_mpjpe_mm"] > 1.0
    assert allowed["constant_shape_mm"] == pytest.approx(metrics.constant_shape_mm(shape, gt))
    assert corrected["constant_shape_mm"] == pytest.approx(
        metrics.constant_shape_mm(shape, gt, allow_reflection=False))
    assert corrected["fraction_of_constant_shape"] == pytest.approx(
        corrected["pa_mpjpe_mm"] / corrected["constant_shape_mm"])
    assert scores["tta"] == 1 and scores["n"] == 6
    # unaligned, camera space: the mirror moves every joint by twice its x; no alignment undoes that
    camera = np.linalg.norm(mirrored - gt, axis=-1).mean() * 1000.0
    assert allowed["camera_mpjpe_mm"] == corrected["camera_mpjpe_mm"] == pytest.approx(camera)
    table = "\n".join(said())
    for label in ("PA-MPJPE mm", "AUC 0-50mm", "F@5mm", "F@15mm", "root-rel. MPJPE mm", "of constant shape",
                  "constant-shape baseline", "reflections corrected (MP21)", "camera MPJPE mm", "root >10cm"):
        assert label in table


# --- the command line -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", models.list_models())
def test_predict_runs_on_a_checkpoint_of_every_arch(arch, marker_set, tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "run" / "best.pt", arch, marker_set)
    viz = 2 if arch == "ghost_lite" else 0
    code, out, err = run_predict(["--ckpt", ckpt, "--tta", 2, "--out", tmp_path / "sub", "--workers", 0,
                              "--device", "cpu", "--viz", viz], capsys)
    assert code == 0, err
    record = load_predictions(tmp_path / "sub.npz")
    assert record["arch"] == arch and record["tta"] == 2 and record["split"] == "evaluation"
    np.testing.assert_array_equal(record["ids"], [0, 1, 2])
    assert read_freihand_zip(tmp_path / "sub.zip")[0].shape == (3, 21, 3)
    scores = json.loads((tmp_path / "sub.metrics.json").read_text())
    assert np.isfinite(scores["reflections_allowed"]["pa_mpjpe_mm"])
    assert "root depth: every bone against the known bone scale" in out and str(ckpt.name) in out
    if viz:
        pictures = sorted((tmp_path / "sub_viz").glob("*.png"))
        assert [p.name for p in pictures] == ["0000.png", "0002.png"]
        with Image.open(pictures[0]) as picture:
            assert picture.size[0] > picture.size[1] > 100
    ckpt.unlink()  # large architectures: free the disk now


def test_defaults_newest_checkpoint_its_data_root_and_the_submission_split(marker_set, tmp_path, monkeypatch, capsys):
    """No options: the newest runs/*/best.pt, the data root it trained on, FreiHAND's evaluation split, the
    freihand format and submissions/<run>_evaluation_tta1."""
    runs = tmp_path / "runs"
    write_checkpoint(runs / "older" / "best.pt", "ghost_lite", marker_set)
    write_checkpoint(runs / "newer" / "best.pt", "ghost_lite", marker_set)
    monkeypatch.setenv("HANDPOSE_RUNS", str(runs))
    monkeypatch.setenv("HANDPOSE_SUBMISSIONS", str(tmp_path / "submissions"))
    code, out, err = run_predict(["--workers", 0], capsys)
    assert code == 0, err
    prefix = tmp_path / "submissions" / "newer_evaluation_tta1"
    assert all(p.is_file() for p in (prefix.with_suffix(".npz"), prefix.with_suffix(".zip"),
                                     prefix.with_suffix(".metrics.json")))
    assert "newer" in out and str(marker_set) in out


def test_mp21_layout_defaults_to_its_test_split_and_ait_test_preds_json_gz(tmp_path, capsys):
    """MP21: the test split, unlabelled (no metrics file), no *_scale.json (the training mean bone length); the
    upload is PREFIX/test_preds.json.gz in the course template's AIT order."""
    root = write_marker_dataset(tmp_path / "mp21", n=4, n_eval=2, layout="mp21", seed=3)
    ckpt = write_checkpoint(tmp_path / "run" / "best.pt", "ghost_lite", root)
    code, out, err = run_predict(["--ckpt", ckpt, "--out", tmp_path / "sub", "--workers", 0], capsys)
    assert code == 0, err
    record = load_predictions(tmp_path / "sub.npz")
    assert record["split"] == "test" and record["layout"] == "mp21"
    with gzip.open(tmp_path / "sub" / "test_preds.json.gz", "rt") as f:
        written = np.array(json.load(f))
    np.testing.assert_allclose(written, record["xyz"][:, COURSE_AIT] * 1000.0, atol=1e-3)   # slot k: joint AIT[k]
    assert not (tmp_path / "sub.metrics.json").exists()
    assert "training mean bone length" in out and "ait joint order" in out


def test_checkpoint_of_another_arch_is_one_line(ghost_ckpt, tmp_path, capsys):
    state = load_checkpoint(ghost_ckpt)
    for name, arch, options, fragment in [("claims_hg_mlp", "hg_mlp", {}, "do not fit arch 'hg_mlp'"),
                                          ("claims_resnet34", "resnet34", None, "do not fit arch 'resnet34'"),
                                          ("claims_nothing", "resnet35", None, "unknown arch 'resnet35'")]:
        config = {**state["config"], "arch": arch, "model": state["config"]["model"] if options is None else options}
        path = tmp_path / name / "best.pt"
        path.parent.mkdir()
        save_checkpoint({**state, "config": config}, path)
        code, _, err = run_predict(["--ckpt", path, "--out", tmp_path / "sub", "--workers", 0], capsys)
        assert_one_line_error(code, err, str(path), fragment)
    assert not list(tmp_path.glob("sub*"))


@pytest.mark.parametrize("content", [b"not a checkpoint", b"{\"arch\": \"ghost_lite\"}", "half", b""])
def test_broken_checkpoint_is_one_line(ghost_ckpt, tmp_path, capsys, content):
    path = tmp_path / "best.pt"
    path.write_bytes(ghost_ckpt.read_bytes()[:2000] if content == "half" else content)
    code, _, err = run_predict(["--ckpt", path, "--out", tmp_path / "sub"], capsys)
    assert_one_line_error(code, err, str(path))
    assert not list(tmp_path.glob("sub*"))


@pytest.mark.parametrize("argv, fragment", [
    (["--format", "kaggle"], "--format 'kaggle': choose one of freihand, mp21"),
    (["--format", "freihand", "--joint-order", "mano"], "always in FreiHAND order"),
    (["--format", "mp21", "--joint-order", "xyz"], "--joint-order 'xyz'"),
    (["--tta", "0"], "--tta 0: must be at least 1"),
    (["--split", "holdout"], "unknown split 'holdout'")])
def test_bad_options_are_one_line_and_write_nothing(ghost_ckpt, marker_set, tmp_path, capsys, argv, fragment):
    code, _, err = run_predict(["--ckpt", ghost_ckpt, "--out", tmp_path / "sub", "--workers", 0, *argv], capsys)
    assert_one_line_error(code, err, fragment)
    assert not list(tmp_path.glob("sub*"))


def test_non_finite_predictions_write_no_upload(ghost_ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(predict.geometry, "uvd_to_xyz", lambda uvd, K, depth: np.full((3, 21, 3), np.nan))
    code, _, err = run_predict(["--ckpt", ghost_ckpt, "--out", tmp_path / "sub", "--workers", 0], capsys)
    assert_one_line_error(code, err, "NaN or inf", "nothing was written")
    assert list(tmp_path.iterdir()) == []


def test_root_depth_falls_back_where_the_bones_give_none():
    """Every joint at the input's centre (an untrained effb0_1d): no depth fits the bones better than another, so
    the root depth is the training mean and the xyz stay finite; a hand whose bones have the lengths the stats
    expect keeps its exact depth."""
    K = np.array([[[500.0, 0, 32], [0, 500, 32], [0, 0, 1]]] * 2)
    hand = random_hands(1, seed=4)[0]
    uvd = np.stack([np.tile([31.5, 31.5, 0.0], (21, 1)), geometry.xyz_to_uvd(hand, K[1])])
    predictions = {"uvd": uvd, "K": K, "bone_length": np.array([np.nan, geometry.bone_length(hand)])}
    mean, sd = bone_ratios(hand[None])
    stats = {"bone_length_m": 0.03, "root_depth_m": 0.55, "bone_ratio_mean": mean.tolist(),
             "bone_ratio_sd": sd.tolist()}
    depth, fell_back = inference.root_depths(predictions, stats)
    assert list(fell_back) == [True, False]
    assert depth[0] == 0.55
    assert depth[1] == pytest.approx(hand[geometry.ROOT_JOINT, 2])
    xyz = inference.camera_joints(predictions, stats)
    assert np.isfinite(xyz).all()
    np.testing.assert_allclose(xyz[1], hand, atol=1e-9)


def test_checkpoints_record_the_training_bone_ratios_and_older_ones_are_announced(marker_set, ghost_ckpt, tmp_path,
                                                                                 capsys):
    """The stats hold each bone's ratio to the scale bone over the training hands; the root depth expects those
    lengths, and a checkpoint without them (an earlier version's) expects the reference hand's, saying so."""
    split = load_split(marker_set, "train")
    hands = split.xyz[np.unique(split.ann_ids, return_index=True)[1]]
    ratios = bone_lengths(hands) / geometry.bone_length(hands)[:, None]             # (hands, 20), by hand
    stats = training_stats(split)
    np.testing.assert_allclose(stats["bone_ratio_mean"], ratios.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats["bone_ratio_sd"], ratios.std(0), rtol=1e-12)
    np.testing.assert_allclose(inference.expected_bones(stats, np.array([0.03]))[0], 0.03 * ratios.mean(0)[None])
    state = torch.load(ghost_ckpt, weights_only=False)
    state["stats"] = {key: value for key, value in state["stats"].items() if not key.startswith("bone_ratio")}
    old = tmp_path / "old_run" / "best.pt"
    old.parent.mkdir()
    torch.save(state, old)
    for name, ckpt in (("recorded", ghost_ckpt), ("old", old)):
        code, out, err = run_predict(["--ckpt", ckpt, "--tta", 1, "--out", tmp_path / name, "--workers", 0], capsys)
        assert code == 0, err
        assert ("records no bone ratios" in out) == (name == "old")
        assert ("bone lengths as the reference hand has them" in out) == (name == "old")
    # the training hands drawn exactly: their own ratios put them nearer their depth than the reference hand's
    predictions = {"uvd": geometry.xyz_to_uvd(split.xyz, split.K), "K": split.K, "bone_length": split.scale}
    truth = split.xyz[:, geometry.ROOT_JOINT, 2]
    errors = {name: np.abs(inference.root_depths(predictions, stats_of)[0] - truth)
              for name, stats_of in (("recorded", stats), ("old", state["stats"]))}
    assert errors["recorded"].mean() < errors["old"].mean()


def drawn_short(xyz):
    """Hands (N, 21, 3) as a model that draws every fingertip halfway to its DIP joint predicts them."""
    drawn = xyz.copy()
    drawn[:, 4::4] = (xyz[:, 4::4] + xyz[:, 3::4]) / 2
    return drawn


def test_calibration_takes_out_the_lengths_a_model_draws_short():
    """Fingertips drawn at half their length push every hand away; the factors measured on labelled validation
    hands (half for the five distal bones, one elsewhere) bring the others' depths back, and the bones, exact
    but for that, outweigh the crop's framing."""
    from tests.hands import synthetic_hands
    val, val_K = synthetic_hands(60, seed=11)
    test, test_K = synthetic_hands(60, seed=12)
    mean, sd = bone_ratios(val)
    stats = {"bone_length_m": 0.04, "root_depth_m": 0.7, "bone_ratio_mean": mean.tolist(), "bone_ratio_sd": sd.tolist()}
    labelled = {"uvd": geometry.xyz_to_uvd(drawn_short(val), val_K), "K": val_K,
                "bone_length": geometry.bone_length(val), "xyz": val}
    calibration = inference.calibrate(labelled, stats)
    factor = calibration.bone_factor
    np.testing.assert_allclose(factor[3::4] / np.median(factor[[0, 1, 2, 5, 6, 9, 10]]), 0.5, atol=0.05)
    assert calibration.bones_weight > 0.9 and 0.05 < calibration.framing_spread < 0.3
    predictions = {"uvd": geometry.xyz_to_uvd(drawn_short(test), test_K), "K": test_K,
                   "bone_length": geometry.bone_length(test)}
    truth = test[:, geometry.ROOT_JOINT, 2]
    plain = np.abs(inference.root_depths(predictions, stats)[0] - truth)
    calibrated = np.abs(inference.root_depths(predictions, stats, calibration)[0] - truth)
    assert np.median(plain) > 0.03 and np.median(calibrated) < 0.01 and calibrated.max() < 0.1


def noisy_predictions(xyz, K, seed, collapsed=0.1):
    """uvd (N, 21, 3) of hands seen with a trained model's noise (2 px, 1 cm), a share ``collapsed`` of them drawn
    at 30 % of their size about their centre (an unsure model's average hand); and which."""
    rng = np.random.default_rng(seed)
    uvd = geometry.xyz_to_uvd(xyz, K)
    uvd[..., :2] += rng.normal(0.0, 2.0, uvd[..., :2].shape)
    uvd[..., 2] += rng.normal(0.0, 0.01, uvd[..., 2].shape) / geometry.DEPTH_RANGE_M
    shrunk = rng.uniform(size=len(xyz)) < collapsed
    centre = uvd[shrunk, :, :2].mean(1, keepdims=True)
    uvd[shrunk, :, :2] = centre + 0.3 * (uvd[shrunk, :, :2] - centre)
    uvd[shrunk, :, 2] *= 0.3
    return uvd, shrunk


def test_calibration_keeps_hands_drawn_too_small_within_the_framing():
    """A hand drawn at a third of its size fits its bones metres away; the crop's framing, weighed against the
    bones on validation hands drawn alike, keeps every root within half a metre."""
    from tests.hands import synthetic_hands
    val, val_K = synthetic_hands(100, seed=21)
    test, test_K = synthetic_hands(200, seed=22)
    stats = {"bone_length_m": 0.04, "root_depth_m": 0.7}
    labelled = {"uvd": noisy_predictions(val, val_K, 1)[0], "K": val_K, "bone_length": geometry.bone_length(val),
                "xyz": val}
    calibration = inference.calibrate(labelled, stats)
    assert 0.1 < calibration.bones_weight < 0.9
    uvd, shrunk = noisy_predictions(test, test_K, 2)
    predictions = {"uvd": uvd, "K": test_K, "bone_length": geometry.bone_length(test)}
    truth = test[:, geometry.ROOT_JOINT, 2]
    plain = np.abs(inference.root_depths(predictions, stats)[0] - truth)
    calibrated = np.abs(inference.root_depths(predictions, stats, calibration)[0] - truth)
    assert np.sum(plain > 0.5) >= 10 and plain[shrunk].min() > 0.5
    assert calibrated.max() < 0.5 and calibrated.mean() < 0.1


def test_calibration_needs_the_runs_validation_predictions_and_their_labels(marker_set, tmp_path):
    stats = training_stats(load_split(marker_set, "train"))
    config = {"data_root": str(marker_set), "img_size": IMG_SIZE}
    calibration, line = inference.validation_calibration(tmp_path, config, stats)
    assert calibration is None and "val_pred.npz not found" in line
    val = load_split(marker_set, "val")
    np.savez(tmp_path / "val_pred.npz", xyz=val.xyz, ids=val.image_ids, split="val")
    calibration, line = inference.validation_calibration(tmp_path, config, stats)
    assert "validation images" in line and calibration.bone_factor.shape == (20,)
    np.savez(tmp_path / "val_pred.npz", xyz=val.xyz, ids=val.image_ids + 10_000, split="val")
    calibration, line = inference.validation_calibration(tmp_path, config, stats)
    assert calibration is None and "does not match the val split" in line


def test_channels_last_path_gives_the_same_prediction():
    """The CUDA memory layout, run on the CPU: same numbers as the default layout."""
    torch.manual_seed(0)
    model = models.create_model("ghost_lite").eval()
    images, _ = marker_batch(count=2)
    images = torch.nn.functional.interpolate(images.float(), size=IMG_SIZE).round().to(torch.uint8)
    plain = inference.predict_batch(model, images, tta=2)
    model = model.to(memory_format=torch.channels_last)
    np.testing.assert_allclose(inference.predict_batch(model, images, tta=2, channels_last=True), plain, atol=1e-4)
