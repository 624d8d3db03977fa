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
from tests.scripts import make_synthetic_set, run_main
from tests.test_export import exported, markers  # noqa: F401  (fixtures: a checkpoint exported beside it)
from tests.test_predict import assert_one_line_error
from training import config as config_module
from training.checkpoints import load_checkpoint, save_checkpoint
from training.setup import with_pseudo_labels
from uploads.records import load_predictions
from uploads.writing import save_record


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """Two datasets made alike (same split names and ids, other images): (first root, second root)."""
    base = tmp_path_factory.mktemp("twins")
    return (make_synthetic_set(base / "first", 16, 6, seed=11, size=64),
            make_synthetic_set(base / "second", 16, 6, seed=12, size=64))


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

@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_a_truncated_or_empty_onnx_file_is_one_line(exported, markers, tmp_path, capsys, damage):  # noqa: F811
    ckpt = tmp_path / "run" / "best.pt"
    ckpt.parent.mkdir()
    shutil.copy(exported, ckpt)
    good = onnx_backend.onnx_path(exported).read_bytes()
    onnx_backend.onnx_path(ckpt).write_bytes(good[:len(good) // 2] if damage == "truncated" else b"")
    code, _, err = run_main(predict.main, ["--ckpt", ckpt, "--data-root", markers, "--backend", "onnxruntime",
                                           "--out", tmp_path / "p"], capsys)
    assert_one_line_error(code, err, "is not a readable ONNX model", "export it again", "--export onnx")
    assert not list(tmp_path.glob("p*"))


def test_an_onnx_file_of_another_input_size_is_one_line(exported, markers, tmp_path, capsys):  # noqa: F811
    ckpt = tmp_path / "run" / "best.pt"
    ckpt.parent.mkdir()
    state = load_checkpoint(exported)
    state["config"]["img_size"] += 32
    save_checkpoint(state, ckpt)
    shutil.copy(onnx_backend.onnx_path(exported), onnx_backend.onnx_path(ckpt))
    code, _, err = run_main(predict.main, ["--ckpt", ckpt, "--data-root", markers, "--backend", "onnxruntime"], capsys)
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
        with_pseudo_labels(None, config, first, print)


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
