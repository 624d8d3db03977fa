"""predict.py --images: one's own pictures of any size, the camera given or the stated default, left hands
by mirroring, pictures drawn, and a one-line error for a file that is not a picture."""
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from prediction import own_images
from tests.checkpoints import TINY_HOURGLASS, write_checkpoint
from tests.scripts import assert_one_line_error, run_predict


@pytest.fixture(scope="module")
def ckpt(marker_set, tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("runs") / "hg" / "best.pt", "hourglass_attn", marker_set,
                            model=TINY_HOURGLASS)


def drawn_hand(width, height, seed):
    """An RGB picture of a palm and five fingers of random lengths on a plain background."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), tuple(int(c) for c in rng.integers(40, 120, 3)))
    draw = ImageDraw.Draw(image)
    cx, cy, r = width * 0.5, height * 0.62, min(width, height) * 0.2
    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(225, 180, 150))
    for angle in np.linspace(-2.6, -0.4, 5):
        reach = r * rng.uniform(1.6, 2.6)
        draw.line((cx, cy, cx + reach * np.cos(angle), cy + reach * np.sin(angle)), fill=(220, 175, 145),
                  width=max(2, int(r / 3)))
    return image


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pictures")
    drawn_hand(90, 60, 0).save(folder / "wide.png")
    drawn_hand(48, 80, 1).save(folder / "tall.jpg", quality=95)
    return folder


def read(prefix):
    return json.loads(prefix.with_suffix(".json").read_text()), np.load(prefix.with_suffix(".npz"))


def test_pictures_of_any_size_give_joints_in_their_own_pixels_and_pictures(ckpt, pictures, tmp_path, capsys):
    code, out, err = run_predict(["--ckpt", ckpt, "--images", pictures, "--viz", "2", "--out", tmp_path / "p"], capsys)
    assert code == 0, err
    saved, arrays = read(tmp_path / "p")
    assert [p["file"].rsplit("/", 1)[-1] for p in saved["pictures"]] == ["tall.jpg", "wide.png"]
    assert not saved["camera_known"] and "xyz_camera_m" not in arrays
    assert arrays["uv_px"].shape == (2, 21, 2) and arrays["xyz_root_relative_m"].shape == (2, 21, 3)
    np.testing.assert_allclose(arrays["xyz_root_relative_m"][:, 9], 0.0)
    np.testing.assert_allclose(arrays["K"][:, 0, 0], own_images.DEFAULT_FOCAL_PER_SIDE * np.array([80, 90]))
    np.testing.assert_allclose(arrays["K"][:, :2, 2], [[23.5, 39.5], [44.5, 29.5]])
    assert len(list((tmp_path / "p_viz").glob("*.png"))) == 2 and "camera: unknown" in out


def test_a_known_focal_length_gives_camera_space_joints_that_project_onto_the_2d_ones(ckpt, pictures, tmp_path,
                                                                                      capsys):
    code, _, err = run_predict(["--ckpt", ckpt, "--images", pictures / "wide.png", "--focal", "300",
                            "--out", tmp_path / "f"], capsys)
    assert code == 0, err
    saved, arrays = read(tmp_path / "f")
    assert saved["camera_known"] and arrays["K"][0, 0, 0] == 300.0
    xyz = arrays["xyz_camera_m"][0]
    uv = xyz[:, :2] / xyz[:, 2:] * 300.0 + arrays["K"][0, :2, 2]
    np.testing.assert_allclose(uv, arrays["uv_px"][0], atol=1e-6)


def test_a_mirrored_right_hand_predicted_as_a_left_one_gives_the_mirrored_joints(ckpt, pictures, tmp_path, capsys):
    mirrored = tmp_path / "mirrored"
    mirrored.mkdir()
    with Image.open(pictures / "wide.png") as image:
        image.transpose(Image.FLIP_LEFT_RIGHT).save(mirrored / "wide.png")
    code, _, err = run_predict(["--ckpt", ckpt, "--images", pictures / "wide.png", "--tta", "3",
                            "--out", tmp_path / "right"], capsys)
    assert code == 0, err
    code, _, err = run_predict(["--ckpt", ckpt, "--images", mirrored / "wide.png", "--tta", "3", "--hand", "left",
                            "--out", tmp_path / "left"], capsys)
    assert code == 0, err
    right, (left_json, left) = read(tmp_path / "right")[1], read(tmp_path / "left")
    assert left_json["pictures"][0]["hand"] == "left"
    np.testing.assert_allclose(left["uv_px"][..., 0], 90 - 1 - right["uv_px"][..., 0], atol=1e-3)
    np.testing.assert_allclose(left["uv_px"][..., 1], right["uv_px"][..., 1], atol=1e-3)
    flip = np.array([-1.0, 1.0, 1.0])
    np.testing.assert_allclose(left["xyz_root_relative_m"], right["xyz_root_relative_m"] * flip, atol=1e-5)


def test_a_file_that_is_not_a_picture_is_one_line_before_any_work(ckpt, pictures, tmp_path, capsys):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a picture")
    code, _, err = run_predict(["--ckpt", ckpt, "--images", pictures, bad, "--out", tmp_path / "x"], capsys)
    assert_one_line_error(code, err, f"cannot read picture {bad}", "replace or remove it")
    assert not list(tmp_path.glob("x*"))


@pytest.mark.parametrize("args, message", [
    (["--hand", "left"], "--hand left: only read with --images"),
    (["--images", "nowhere"], "--images nowhere: no such file or folder"),
    (["--images", ".", "--focal", "-3"], "--focal -3.0: must be a positive number"),
])
def test_picture_options_are_checked(ckpt, args, message, capsys):
    code, _, err = run_predict(["--ckpt", ckpt, *args], capsys)
    assert_one_line_error(code, err, message)
