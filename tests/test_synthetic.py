"""The synthetic generator: FreiHAND v2 layout, geometry that matches the pictures, anatomy, determinism."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from core import common
from core.common import PROJECT_ROOT, UserError
from data import synthetic
from core.geometry import BONES
from core.geometry import SCALE_BONE, bone_length, project
from tests.scripts import stop_signals_as_in_a_terminal

N_TRAIN, N_EVAL, SEED, SIZE = 24, 8, 1, 224
FINGER_BASES = (5, 9, 13, 17)   # index..pinky MCP; each finger is base..base+3
HINGE_LIMITS_DEG = {"PIP": (0.0, 110.0), "DIP": (0.0, 90.0)}   # anatomy, not the generator's own constants
THUMB_IP_MAX_DEG = 90.0


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """The command line's output folder and its summary line."""
    out = tmp_path_factory.mktemp("synthetic") / "hands"
    done = subprocess.run([sys.executable, "-m", "data.synthetic", "--out", str(out), "--train", str(N_TRAIN),
                           "--eval", str(N_EVAL), "--seed", str(SEED), "--workers", "2"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    return out, done.stdout


@pytest.fixture(scope="module")
def labels(generated):
    """{split: (K (N, 3, 3), xyz (N, 21, 3), scale (N,))} as written."""
    root = generated[0]
    return {split: tuple(np.array(json.loads((root / f"{split}_{name}.json").read_text()))
                         for name in ("K", "xyz", "scale"))
            for split in ("training", "evaluation")}


def _image(root, split, folder, index):
    return np.asarray(Image.open(root / split / folder / f"{index:08d}.jpg"))


def _signed_bend_deg(before, after, axis):
    """Signed angle (N,) between bone vectors (N, 3), positive when turning right-handedly about axis (N, 3)."""
    cross = np.cross(before, after)
    sign = np.sign((cross * axis).sum(-1))
    return np.degrees(np.arctan2(np.linalg.norm(cross, axis=-1) * sign, (before * after).sum(-1)))


def test_cli_writes_the_freihand_v2_layout(generated):
    root, stdout = generated
    assert len(stdout.strip().splitlines()) == 1 and "images/s" in stdout
    names = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    expected = {f"{split}_{name}.json" for split in ("training", "evaluation") for name in ("K", "xyz", "scale")}
    expected |= {f"training/{folder}/{i:08d}.jpg" for folder in ("rgb", "mask") for i in range(N_TRAIN)}
    expected |= {f"evaluation/rgb/{i:08d}.jpg" for i in range(N_EVAL)}
    assert names == expected | {synthetic.SETTINGS_FILE}
    assert synthetic.read_settings(root) == synthetic.settings(N_TRAIN, N_EVAL, SEED, SIZE, versions=1)
    assert not list(root.parent.glob(".*partial*"))
    rgb, mask = Image.open(root / "training/rgb/00000000.jpg"), Image.open(root / "training/mask/00000000.jpg")
    assert (rgb.mode, rgb.size, mask.mode, mask.size) == ("RGB", (SIZE, SIZE), "L", (SIZE, SIZE))


def test_label_shapes_and_camera_range(labels):
    for split, count in (("training", N_TRAIN), ("evaluation", N_EVAL)):
        K, xyz, scale = labels[split]
        assert K.shape == (count, 3, 3) and xyz.shape == (count, 21, 3) and scale.shape == (count,)
        assert np.all((K[:, 0, 0] >= 400) & (K[:, 0, 0] <= 700)) and np.all(K[:, 0, 0] == K[:, 1, 1])
        assert np.all(np.abs(K[:, :2, 2] - (SIZE - 1) / 2) <= 15) and K[:, :2, 2].std() > 1
        assert np.all(K[:, 2] == [0, 0, 1]) and np.all(K[:, 0, 1] == 0) and np.all(K[:, 1, 0] == 0)
        assert np.all(xyz[..., 2] > 0.1)


def test_joints_project_inside_the_image_with_a_margin(labels):
    for K, xyz, _ in labels.values():
        uv = project(xyz, K)
        assert uv.min() >= 5 and uv.max() <= SIZE - 1 - 5


def test_every_joint_lies_on_the_hand_mask(generated, labels):
    """Within 3 px always, and (a camera off by a few pixels would break this) almost always exactly on it."""
    root = generated[0]
    K, xyz, _ = labels["training"]
    pixels = np.rint(project(xyz, K)).astype(int)   # (N, 21, 2) u, v
    exactly_on = []
    for index in range(N_TRAIN):
        hand = _image(root, "training", "mask", index) >= 128
        for u, v in pixels[index]:
            assert hand[v - 3:v + 4, u - 3:u + 4].any(), f"sample {index}: joint at ({u}, {v}) is off the mask"
        exactly_on.append(hand[pixels[index, :, 1], pixels[index, :, 0]])
    assert np.mean(exactly_on) >= 0.995


def test_mask_covers_a_plausible_fraction(generated):
    fractions = [(_image(generated[0], "training", "mask", i) >= 128).mean() for i in range(N_TRAIN)]
    assert 0.01 < min(fractions) and max(fractions) < 0.6 and np.std(fractions) > 0.01


def test_image_shows_a_skin_coloured_hand_where_the_mask_is(generated):
    differs = []
    for index in range(N_TRAIN):
        rgb = _image(generated[0], "training", "rgb", index).astype(float)
        hand = _image(generated[0], "training", "mask", index) >= 128
        core = hand & np.roll(hand, 2, 0) & np.roll(hand, -2, 0) & np.roll(hand, 2, 1) & np.roll(hand, -2, 1)
        red, _, blue = np.median(rgb[core], axis=0)
        assert red > blue, f"sample {index}: the masked pixels are not skin coloured"
        differs.append(np.abs(rgb[core].mean(0) - rgb[~hand].mean(0)).max() > 15)
    assert np.mean(differs) > 0.75


def test_scale_is_the_middle_mcp_to_pip_length(labels):
    for _, xyz, scale in labels.values():
        np.testing.assert_allclose(scale, bone_length(xyz, SCALE_BONE), atol=1e-7)
        assert np.all((scale > 0.02) & (scale < 0.07))


def test_bone_lengths_proportions_and_distances_vary(labels):
    _, xyz, scale = labels["training"]
    bones = np.linalg.norm(xyz[:, BONES[:, 1]] - xyz[:, BONES[:, 0]], axis=-1)   # (N, 20) in BONES order
    assert np.all(bones.std(0) / bones.mean(0) > 0.03)
    middle_over_index = bones[:, 9] / bones[:, 5]   # proximal phalanges (bone b ends at joint b + 1)
    assert middle_over_index.std() > 0.02
    assert xyz[:, 9, 2].max() - xyz[:, 9, 2].min() > 0.1


def test_fingers_are_right_handed_hinges_within_their_limits(labels):
    """Index..pinky PIP and DIP bend only towards the palm of a right hand (about the pinky -> index axis, so a
    mirrored hand or a backwards bend fails), no further than their limits, and each finger stays planar."""
    xyz = np.concatenate([labels["training"][1], labels["evaluation"][1]])
    radial = xyz[:, 5] - xyz[:, 17]
    bends = []
    for base in FINGER_BASES:
        b1, b2, b3 = (xyz[:, base + k + 1] - xyz[:, base + k] for k in range(3))
        for (low, high), (before, after) in zip(HINGE_LIMITS_DEG.values(), [(b1, b2), (b2, b3)]):
            bend = _signed_bend_deg(before, after, radial)
            assert bend.min() >= low - 0.5 and bend.max() <= high + 0.5
            bends.append(bend)
        lengths = np.linalg.norm(b1, axis=-1) * np.linalg.norm(b2, axis=-1) * np.linalg.norm(b3, axis=-1)
        assert np.max(np.abs((np.cross(b1, b2) * b3).sum(-1)) / lengths) < 1e-3   # coplanar bones
    assert np.max(bends) > 45 and np.mean(np.concatenate(bends) > 5) > 0.3   # poses are not all flat
    thumb_ip = np.abs(_signed_bend_deg(xyz[:, 3] - xyz[:, 2], xyz[:, 4] - xyz[:, 3], radial))   # sign unused
    assert thumb_ip.max() <= THUMB_IP_MAX_DEG


def test_hands_are_seen_from_the_palm_and_from_the_back(labels):
    xyz = np.concatenate([labels["training"][1], labels["evaluation"][1]])
    volar = np.cross(xyz[:, 5] - xyz[:, 0], xyz[:, 17] - xyz[:, 0])   # palm normal of a right hand
    towards_camera = (volar * -xyz[:, 0]).sum(-1) > 0
    assert 0 < towards_camera.sum() < len(xyz)


def test_hands_face_the_camera_fingers_up_and_centred(labels):
    """FreiHAND-like views: the palm plane faces the camera (tilted, never edge-on), the fingers point up in the
    image give or take a turn, and the hand sits near the image centre."""
    K = np.concatenate([labels["training"][0], labels["evaluation"][0]])
    xyz = np.concatenate([labels["training"][1], labels["evaluation"][1]])
    volar = np.cross(xyz[:, 5] - xyz[:, 0], xyz[:, 17] - xyz[:, 0])
    tilt_deg = np.degrees(np.arccos(np.abs(volar[:, 2]) / np.linalg.norm(volar, axis=-1)))
    assert 10 < np.median(tilt_deg) < 45 and np.mean(tilt_deg < 60) > 0.7
    uv = project(xyz, K)
    up = uv[:, 9] - uv[:, 0]                         # wrist -> middle MCP in the image
    assert np.mean(up[:, 1] < 0) > 0.75              # v grows downwards
    assert np.mean(np.abs(up[:, 0]) > np.abs(up[:, 1])) > 0.05   # some hands turned sideways
    box_centre = (uv.min(1) + uv.max(1)) / 2
    assert np.all(np.abs(box_centre - (SIZE - 1) / 2) < 0.2 * SIZE)


def test_same_seed_is_byte_identical_whatever_the_workers_and_another_seed_differs(generated, tmp_path):
    root = generated[0]
    again = synthetic.generate(tmp_path / "again", N_TRAIN, N_EVAL, seed=SEED, size=SIZE, workers=1)
    for path in root.rglob("*"):
        if path.is_file():
            assert (again / path.relative_to(root)).read_bytes() == path.read_bytes(), path.name
    other = synthetic.generate(tmp_path / "other", 4, 0, seed=SEED + 1, size=SIZE, workers=1)
    for index in range(4):
        name = f"training/rgb/{index:08d}.jpg"
        assert (other / name).read_bytes() != (root / name).read_bytes()
    first_xyz = json.loads((root / "training_xyz.json").read_text())[:4]
    assert json.loads((other / "training_xyz.json").read_text()) != first_xyz


def test_versions_paint_the_same_hand_again_in_freihands_numbering(tmp_path):
    out = synthetic.generate(tmp_path / "versions", 3, 1, seed=2, size=96, workers=1, versions=2)
    assert len(list((out / "training/rgb").iterdir())) == 6 and len(list((out / "training/mask").iterdir())) == 3
    assert len(json.loads((out / "training_xyz.json").read_text())) == 3
    assert len(list((out / "evaluation/rgb").iterdir())) == 1
    single = synthetic.generate(tmp_path / "single", 3, 0, seed=2, size=96, workers=1)
    assert (single / "training_xyz.json").read_text() == (out / "training_xyz.json").read_text()
    for index in range(3):
        hand = _image(out, "training", "mask", index) >= 128
        first, second = (_image(out, "training", "rgb", v * 3 + index).astype(float) for v in range(2))
        assert np.abs(first - second)[~hand].mean() > 10   # another background ...
        for rgb in (first, second):                        # ... behind the same hand
            assert np.abs(rgb[hand].mean(0) - rgb[~hand].mean(0)).max() > 10 or hand.mean() < 0.01


def test_the_default_set_is_made_once_and_again_when_an_older_generator_made_it(tmp_path, monkeypatch, said):
    import data
    root = tmp_path / "synthetic"
    monkeypatch.setattr(data, "DEFAULT_DATA_ROOT", tmp_path / "freihand")
    monkeypatch.setenv("HANDPOSE_SYNTHETIC", str(root))
    monkeypatch.setattr(data, "SYNTHETIC_DEFAULT", {"n_train": 3, "n_eval": 1, "seed": 0, "size": 64, "versions": 1})
    assert data.resolve_or_generate_data_root() == root and "generating" in said()[-1]
    first = (root / "training_xyz.json").stat().st_mtime_ns
    assert data.resolve_or_generate_data_root() == root and "using" in said()[-1]
    assert (root / "training_xyz.json").stat().st_mtime_ns == first
    (root / synthetic.SETTINGS_FILE).unlink()                     # as a set of the previous generator
    (root / "stale.txt").write_text("from the old set")
    assert data.resolve_or_generate_data_root() == root
    assert "another version of the generator" in said()[-2] and "generating" in said()[-1]
    assert not (root / "stale.txt").exists()
    assert synthetic.read_settings(root)["generator"] == synthetic.GENERATOR_VERSION


def test_the_read_only_resolution_never_makes_or_deletes_the_set(tmp_path, monkeypatch):
    """predict.py --check reads a file: it resolves the data root without generating the synthetic set."""
    import data
    root = tmp_path / "synthetic"
    monkeypatch.setattr(data, "DEFAULT_DATA_ROOT", tmp_path / "freihand")
    monkeypatch.setenv("HANDPOSE_SYNTHETIC", str(root))
    with pytest.raises(UserError, match="no current synthetic set"):
        data.existing_data_root()
    assert not root.exists()


def test_small_images_and_an_existing_empty_folder(tmp_path):
    out = tmp_path / "small"
    out.mkdir()
    synthetic.generate(out, 3, 2, seed=5, size=64, workers=1)
    K, xyz = (np.array(json.loads((out / f"training_{name}.json").read_text())) for name in ("K", "xyz"))
    uv = project(xyz, K)
    assert Image.open(out / "training/rgb/00000002.jpg").size == (64, 64) and uv.min() >= 0 and uv.max() <= 63


def test_an_interrupted_run_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    write_sample = synthetic._write_sample

    def dies_on_the_third(task):
        if task[2] == 2:
            raise KeyboardInterrupt
        return write_sample(task)

    monkeypatch.setattr(synthetic, "_write_sample", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        synthetic.generate(tmp_path / "out", 5, 0, workers=1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_sigterm_is_one_line_exit_143_and_leaves_nothing(tmp_path):
    """SIGTERM (a scheduler's) to the generator and its worker processes mid-way: one line, exit 143, no folder."""
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "data.synthetic", "--out", str(out), "--train", "3000", "--eval",
                                "0", "--size", "64", "--workers", "2"], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=stop_signals_as_in_a_terminal)
    deadline = time.time() + 60
    while not list(tmp_path.glob(".out.tmp-*/training/rgb/*.jpg")) and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143 and err.splitlines() == [
        "interrupted (SIGTERM); nothing was written after the last message above"], err
    assert list(tmp_path.iterdir()) == []


def test_progress_counts_the_images(tmp_path, monkeypatch, capsys):
    """The progress bar counts images (V per training hand); without a terminal a plain line at most every
    PROGRESS_LOG_SECONDS (here 0: every update), none for a step that ends sooner."""
    monkeypatch.setattr(common, "PROGRESS_LOG_SECONDS", 0.0)
    synthetic.main(["--out", str(tmp_path / "a"), "--train", "6", "--eval", "2", "--size", "64", "--versions", "3",
                    "--workers", "1"])
    lines = capsys.readouterr().err.splitlines()
    assert lines and all("\r" not in line and line.startswith("generating: ") for line in lines)
    assert "20/20 [" in lines[-1] and "img/s" in lines[-1]
    monkeypatch.setattr(common, "PROGRESS_LOG_SECONDS", 60.0)
    synthetic.main(["--out", str(tmp_path / "b"), "--train", "6", "--eval", "2", "--size", "64", "--workers", "1"])
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("args", [["--train", "-1", "--eval", "2"], ["--train", "2", "--eval", "2", "--size", "32"],
                                  ["--train", "2", "--eval", "2", "--versions", "0"],
                                  ["--train", "2", "--eval", "2", "NONEMPTY"]])
def test_bad_arguments_give_one_line_and_status_2(tmp_path, capsys, args):
    out = tmp_path / "out"
    if "NONEMPTY" in args:
        args = args[:-1]
        out.mkdir()
        (out / "keep.txt").write_text("x")
    with pytest.raises(SystemExit) as stopped:
        synthetic.main(["--out", str(out), *args])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
