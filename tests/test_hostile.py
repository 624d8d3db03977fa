"""Hostile input met by the newer features: each ends in one line naming the problem and the fix, exit status 2,
nothing written over a good file. The cases: a truncated or empty ONNX file, prediction files made on another
dataset (pseudo-labels, ensemble members, --check), joints in millimetres, paths on --resume, a deleted
pseudo-label file, a spread of the wrong length, one file given twice, an option without the one it needs."""
import shutil

import numpy as np
import pytest

import ensemble
import predict
import train
from core.common import UserError
from data.readers import load_split
from prediction import onnx_backend
from tests.scripts import assert_one_line_error, make_synthetic_set, run_main
from training import config as config_module
from models.checkpoints import load_checkpoint
from training.checkpoints import save_checkpoint
from training.setup import pseudo_labelled_split
from uploads.records import load_predictions
from uploads.writing import save_record


@pytest.fixture(scope="module")
def twins(synthetic_64, tmp_path_factory):
    """Two datasets made alike (same split names and ids, other images): (first root, second root). The first is
    the shared synthetic_64, only read here."""
    return synthetic_64, make_synthetic_set(tmp_path_factory.mktemp("twins") / "second", 16, 6, seed=12, size=64)


def prediction_file(path, data_root, scale=1.0, **extra):
    """A prediction file of the evaluation split of ``data_root`` (its labels, times ``scale``)."""
    split = load_split(data_root, "evaluation")
    record = {"xyz": split.xyz * scale, "ids": split.image_ids, "split": "evaluation", "layout": "freihand",
              "data_root": str(data_root), **extra}
    save_record(path, record)
    return path


TINY = ["--arch", "ghost_lite", "--img-size", "32", "--batch-size", "4", "--pretrained", "none", "--workers", "0",
        "--device", "cpu", "--epochs", "1", "--set", "cache=false"]


# --- the ONNX backend -------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_a_truncated_or_empty_onnx_file_is_one_line(exported, marker_set, tmp_path, capsys, damage):
    ckpt = tmp_path / "run" / "best.pt"
    ckpt.parent.mkdir()
    shutil.copy(exported, ckpt)
    good = onnx_backend.onnx_path(exported).read_bytes()
    onnx_backend.onnx_path(ckpt).write_bytes(good[:len(good) // 2] if damage == "truncated" else b"")
    code, _, err = run_main(predict.main, ["--ckpt", ckpt, "--data-root", marker_set, "--backend", "onnxruntime",
                                           "--out", tmp_path / "p"], capsys)
    assert_one_line_error(code, err, "is not a readable ONNX model", "export it again", "--export onnx")
    assert not list(tmp_path.glob("p*"))


@pytest.mark.slow
def test_an_onnx_file_of_another_input_size_is_one_line(exported, marker_set, tmp_path, capsys):
    ckpt = tmp_path / "run" / "best.pt"
    ckpt.parent.mkdir()
    state = load_checkpoint(exported)
    state["config"]["img_size"] += 32
    save_checkpoint(state, ckpt)
    shutil.copy(onnx_backend.onnx_path(exported), onnx_backend.onnx_path(ckpt))
    code, _, err = run_main(predict.main, ["--ckpt", ckpt, "--data-root", marker_set, "--backend", "onnxruntime"],
                            capsys)
    assert_one_line_error(code, err, "maps image", f"not image [batch, 3, {state['config']['img_size']}")


# --- files made on another dataset ------------------------------------------------------------------------------

def test_pseudo_labels_made_on_another_data_root_are_refused(twins, tmp_path, capsys):
    first, second = twins
    preds = prediction_file(tmp_path / "second.npz", second)
    code, _, err = run_main(train.main, TINY + ["--data-root", first, "--pseudo-labels", preds, "--out",
                                                tmp_path / "run"], capsys)
    assert_one_line_error(code, err, f"was made on the dataset in {second.resolve()}", f"not {first.resolve()}")
    assert not (tmp_path / "run" / "last.pt").exists()


def test_ensemble_members_of_two_data_roots_are_refused(twins, tmp_path, capsys):
    first, second = twins
    a, b = prediction_file(tmp_path / "a.npz", first), prediction_file(tmp_path / "b.npz", second)
    code, _, err = run_main(ensemble.main, [a, b, "--out", tmp_path / "ens"], capsys)
    assert_one_line_error(code, err, "were made on different datasets", str(first.resolve()), str(second.resolve()))
    code, _, err = run_main(ensemble.main, [a, prediction_file(tmp_path / "c.npz", first, scale=1.001),
                                            "--data-root", second, "--out", tmp_path / "ens"], capsys)
    assert_one_line_error(code, err, f"was made on the dataset in {first.resolve()}")
    assert not list(tmp_path.glob("ens*"))


def test_check_of_a_file_against_another_data_root_is_refused(twins, tmp_path, capsys):
    first, second = twins
    code, _, err = run_main(predict.main, ["--check", prediction_file(tmp_path / "a.npz", first),
                                           "--data-root", second], capsys)
    assert_one_line_error(code, err, f"was made on the dataset in {first.resolve()}")


def test_a_file_that_records_no_data_root_is_refused_as_pseudo_labels(twins, tmp_path, capsys):
    first, _ = twins
    split = load_split(first, "evaluation")
    save_record(tmp_path / "bare.npz", {"xyz": split.xyz, "ids": split.image_ids, "split": "evaluation"})
    code, _, err = run_main(train.main, TINY + ["--data-root", first, "--pseudo-labels", tmp_path / "bare.npz",
                                                "--out", tmp_path / "run"], capsys)
    assert_one_line_error(code, err, "records no data root", "predict.py")


# --- units and plausibility -----------------------------------------------------------------------------------

def test_pseudo_labels_in_millimetres_are_refused_by_every_reader(twins, tmp_path, capsys):
    first, _ = twins
    split, mm = load_split(first, "evaluation"), tmp_path / "mm.npz"
    np.savez(mm, xyz=split.xyz * 1000.0, ids=split.image_ids, split="evaluation", data_root=str(first))
    code, _, err = run_main(train.main, TINY + ["--data-root", first, "--pseudo-labels", mm, "--out",
                                                tmp_path / "run"], capsys)
    assert_one_line_error(code, err, "the hands look like millimetres", "wants metres")
    metres = prediction_file(tmp_path / "metres.npz", first)
    for script, argv in ((ensemble.main, [mm, metres, "--out", tmp_path / "ens"]), (predict.main, ["--check", mm])):
        code, _, err = run_main(script, argv, capsys)
        assert_one_line_error(code, err, "the hands look like millimetres")


def test_pseudo_labels_that_are_no_hand_in_front_of_the_camera_are_refused(twins, tmp_path, capsys):
    first, _ = twins
    far = prediction_file(tmp_path / "far.npz", first)
    record = load_predictions(far)
    record["xyz"][2] += [0.0, 0.0, 40.0]                                   # one hand 40 m away
    save_record(far, record)
    code, _, err = run_main(train.main, TINY + ["--data-root", first, "--pseudo-labels", far, "--out",
                                                tmp_path / "run"], capsys)
    assert_one_line_error(code, err, "1 of 6 hands are not a hand in front of the camera",
                          f"image id {record['ids'][2]}")


def test_a_spread_with_another_number_of_rows_is_refused(twins, tmp_path):
    first, _ = twins
    path = prediction_file(tmp_path / "short.npz", first, spread_mm=np.ones(5))
    with pytest.raises(UserError, match=r"spread_mm has shape \(5,\), expected \(6,\)"):
        load_predictions(path)
    path = prediction_file(tmp_path / "nan.npz", first, spread_mm=np.array([1, 2, np.nan, 1, 1, 1.0]))
    with pytest.raises(UserError, match="spread_mm holds NaN"):
        load_predictions(path)


# --- --resume: paths and the pseudo-label file --------------------------------------------------------------

def test_a_run_started_with_relative_paths_resumes_from_another_folder_given_them_absolute(twins, tmp_path,
                                                                                           monkeypatch):
    first, _ = twins
    monkeypatch.chdir(first.parent)
    args = train.parse_args(["--arch", "ghost_lite", "--data-root", first.name, "--out", str(tmp_path / "run")])
    config, _ = config_module.resolve_config(args)
    assert config["data_root"] == str(first.resolve())                      # recorded resolved
    (tmp_path / "run").mkdir()
    save_checkpoint({"config": config, "epoch": 1}, tmp_path / "run" / "last.pt")
    monkeypatch.setattr(config_module, "check_position", lambda state, folder: None)
    monkeypatch.chdir(tmp_path)
    for data_root in (str(first.resolve()), f"../{tmp_path.name}/../{first.parent.name}/{first.name}"):
        again = train.parse_args(["--arch", "ghost_lite", "--data-root", data_root, "--out", str(tmp_path / "run"),
                                  "--resume"])
        _, resumed = config_module.resume_config(again, tmp_path / "run")
        assert resumed["data_root"] == str(first.resolve())


def test_a_deleted_pseudo_label_file_on_resume_says_restore_it(twins, tmp_path):
    first, _ = twins
    gone = tmp_path / "gone.npz"
    config = {"pseudo_labels": str(gone), "pseudo_labels_sha256": "ab" * 32, "pseudo_keep": 1.0,
              "pseudo_weight": 1.0, "img_size": 32, "cache": False}
    with pytest.raises(UserError, match="is gone.*restore it to resume"):
        pseudo_labelled_split(config, first)


# --- the rules in general -------------------------------------------------------------------------------------

def test_one_member_given_twice_is_refused(twins, tmp_path, capsys, monkeypatch):
    first, _ = twins
    a = prediction_file(tmp_path / "a.npz", first)
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(ensemble.main, [a, "a.npz", "--out", tmp_path / "ens"], capsys)
    assert_one_line_error(code, err, "one file given twice")


def test_an_option_without_the_one_it_needs_is_refused(twins, tmp_path, capsys):
    first, _ = twins
    code, _, err = run_main(train.main, TINY + ["--data-root", first, "--set", "pseudo_weight=0.5", "--out",
                                                tmp_path / "run"], capsys)
    assert_one_line_error(code, err, "pseudo_weight set without --pseudo-labels")
    assert not (tmp_path / "run").exists()


# --- pictures as a viewer shows them ------------------------------------------------------------------------------

def dot_picture(width, height, dot, half=4):
    """A grey RGB picture with a red square dot of side 2 ``half`` + 1 px centred on ``dot`` (x, y)."""
    from PIL import Image
    pixels = np.full((height, width, 3), 90, np.uint8)
    x, y = dot
    pixels[y - half:y + half + 1, x - half:x + half + 1] = (255, 0, 0)
    return Image.fromarray(pixels)


def red_centre(pixels):
    """(x, y) centre of the red pixels of (H, W, 3) uint8."""
    ys, xs = np.nonzero((pixels[..., 0] > 200) & (pixels[..., 1] < 60))
    return np.array([xs.mean(), ys.mean()])


def test_the_exif_orientation_is_applied_as_a_viewer_does(tmp_path):
    from PIL import Image

    from core.picture_files import open_as_shown, shown_layout
    stored = dot_picture(120, 80, (100, 20))                   # stored landscape; the tag turns it upright
    exif = Image.Exif()
    exif[0x0112] = 6                                            # rotate 90 degrees clockwise to view
    stored.save(tmp_path / "turned.jpg", exif=exif, quality=95)
    image, reduction = open_as_shown(tmp_path / "turned.jpg")
    assert image.size == (80, 120) == shown_layout(tmp_path / "turned.jpg")[0]
    np.testing.assert_allclose(red_centre(np.asarray(image)), [80 - 1 - 20, 100], atol=1.0)
    np.testing.assert_allclose(reduction, [[1, 0, 0], [0, 1, 0]])


def test_bit_depth_and_transparency_are_read_as_a_viewer_shows_them(tmp_path):
    from PIL import Image

    from core.picture_files import open_as_shown
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(tmp_path / "deep.png")       # 16-bit grey, half
    assert abs(int(np.asarray(open_as_shown(tmp_path / "deep.png")[0])[0, 0, 0]) - 128) <= 1
    clear = np.zeros((8, 8, 4), np.uint8)                                                 # fully transparent
    Image.fromarray(clear, "RGBA").save(tmp_path / "clear.png")
    assert (np.asarray(open_as_shown(tmp_path / "clear.png")[0]) == 255).all()           # white, not black
    Image.fromarray(np.full((8, 8), 200, np.uint8), "L").convert("P").save(tmp_path / "palette.png")
    assert np.asarray(open_as_shown(tmp_path / "palette.png")[0]).shape == (8, 8, 3)


def test_a_huge_jpeg_decodes_at_a_reduced_scale_and_its_joints_map_to_its_own_pixels(tmp_path):
    from core import geometry
    from core.picture_files import shown_layout
    from data.decoding import decode_image, input_affine
    dot = (1500, 400)
    dot_picture(2048, 1536, dot, half=64).save(tmp_path / "huge.jpg", quality=95)
    pixels, affine = decode_image(tmp_path / "huge.jpg", 64)
    assert pixels.shape == (64, 64, 3)
    assert shown_layout(tmp_path / "huge.jpg", fit=64)[0] == (256, 192)                 # decoded at 1/8
    np.testing.assert_allclose(affine, input_affine(*shown_layout(tmp_path / "huge.jpg", fit=64), 64))
    np.testing.assert_allclose(affine, geometry.crop_resize_affine(geometry.square_box(2048, 1536), 64), atol=1e-9)
    where = geometry.apply_affine(affine, np.array([dot], np.float64))[0]
    assert np.abs(where - red_centre(pixels)).max() < 1.0


def test_a_picture_too_large_to_open_safely_is_one_line(tmp_path, monkeypatch):
    from PIL import Image

    from core.picture_files import open_as_shown
    dot_picture(64, 64, (30, 30)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(UserError, match="big.png is too large to open safely.*scale it down"):
        open_as_shown(tmp_path / "big.png")


# --- files written are valid in their format ---------------------------------------------------------------------

def test_json_files_never_hold_nan_or_infinity():
    import json

    from core.json_files import json_text
    text = json_text({"best": float("inf"), "scores": np.array([1.5, np.nan]), "n": np.int64(3),
                      "nested": [{"x": -np.inf}]})
    assert json.loads(text) == {"best": None, "scores": [1.5, None], "n": 3, "nested": [{"x": None}]}
    assert "NaN" not in text and "Infinity" not in text


def test_every_json_file_the_project_writes_goes_through_the_one_encoder():
    """json.dumps is called by core/json_files.py alone (and in messages, never written to a file)."""
    from core.common import PROJECT_ROOT
    standalone = {"tools/gpu_check.py"}     # runs before the project's requirements are installed
    callers = set()
    for path in PROJECT_ROOT.rglob("*.py"):
        relative = path.relative_to(PROJECT_ROOT).as_posix()
        if relative.startswith(("tests/", ".")) or relative in standalone:
            continue
        for line in path.read_text().splitlines():
            if "json.dumps(" in line and "write" in line or "json.dump(" in line:
                callers.add(relative)
    assert callers == set()


@pytest.mark.parametrize("argv, fragment", [
    (["--tta-range", "30"], "give --tta N or drop --tta-range"),
    (["--images", "x.png", "--split", "evaluation"], "drop one of them"),
    (["--export", "onnx", "--backend", "onnxruntime"], "drop --backend"),
])
def test_predict_refuses_an_option_without_the_one_it_needs(argv, fragment, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(predict.main, argv, capsys)
    assert_one_line_error(code, err, fragment)
    assert list(tmp_path.iterdir()) == []


def test_validation_files_of_another_dataset_are_refused_when_fitting_weights(twins, tmp_path, capsys):
    first, second = twins
    members = [prediction_file(tmp_path / f"m{i}.npz", first, scale=1.0 + i * 1e-3) for i in range(2)]
    split = load_split(second, "val")
    val = [tmp_path / f"v{i}.npz" for i in range(2)]
    for path in val:
        save_record(path, {"xyz": split.xyz, "ids": split.image_ids, "split": "val", "data_root": str(second)})
    code, _, err = run_main(ensemble.main, [*members, "--fit-weights", "--val-preds", *val, "--out",
                                            tmp_path / "ens"], capsys)
    assert_one_line_error(code, err, "validation file", f"was made on the dataset in {second.resolve()}")
