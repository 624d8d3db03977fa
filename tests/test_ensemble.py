"""ensemble.py: blends that score better than their members, weights fitted on validation, the outputs of
predict.py, one-line errors for members that do not match; and the whole chain from train.py runs."""
import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import ensemble
from prediction import ensembling
from scoring import metrics
import predict
from uploads.check import check_file
from uploads.records import load_predictions
from uploads.upload_files import read_freihand_zip
from uploads.writing import save_record
import train
from core.common import PROJECT_ROOT, UserError
from data.joints import ORDERS
from data.readers import load_split
from tests.markers import write_marker_dataset
from tests.scripts import run_main


def noisy(xyz, sigma_m, seed):
    """``xyz`` with independent Gaussian noise of ``sigma_m`` metres per coordinate."""
    return xyz + np.random.default_rng(seed).normal(0.0, sigma_m, xyz.shape)


def write_member(path, xyz, ids, split, **extra):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_record(path, {"xyz": xyz, "ids": ids, "split": split, **extra})
    return path


def run_cli(argv, capsys):
    return run_main(ensemble.main, argv, capsys)


def pa_mpjpe_mm(xyz, gt):
    return float(metrics.pa_mpjpe(xyz, gt).mean() * 1000.0)


@pytest.fixture(scope="module")
def freihand(tmp_path_factory):
    """FreiHAND-layout markers: 20 labelled evaluation hands."""
    return write_marker_dataset(tmp_path_factory.mktemp("ens_freihand"), n=4, n_eval=20, seed=7)


@pytest.fixture(scope="module")
def mp21(tmp_path_factory):
    """MP21-layout markers: 24 labelled validation hands, 24 unlabelled test hands."""
    return write_marker_dataset(tmp_path_factory.mktemp("ens_mp21"), n=4, n_eval=24, layout="mp21", seed=8)


@pytest.fixture(scope="module")
def evaluation_members(freihand, tmp_path_factory):
    """Two members predicting FreiHAND's evaluation split with independent noise of 6 mm per coordinate."""
    split = load_split(freihand, "evaluation")
    folder = tmp_path_factory.mktemp("members")
    common = {"ids": split.image_ids, "split": "evaluation", "layout": "freihand", "data_root": str(freihand),
              "constant_shape_m": metrics.generalized_procrustes_mean(split.xyz)}
    return [write_member(folder / f"{name}.npz", noisy(split.xyz, 0.006, seed), **common)
            for seed, name in enumerate(("a", "b"))], split


# --- blends ---------------------------------------------------------------------------------------------------

def test_equal_weights_score_better_than_the_mean_of_the_members():
    """Independent noise averages out: the blend of two equally good members has about 1/sqrt(2) of their error,
    so it scores better than their mean (and than either)."""
    gt = np.random.default_rng(0).normal(0, 0.03, (300, 21, 3)) + [0, 0, 0.6]
    members = np.stack([noisy(gt, 0.005, 1), noisy(gt, 0.005, 2)])
    member_errors = [pa_mpjpe_mm(m, gt) for m in members]
    blended = pa_mpjpe_mm(ensembling.blend(members, [0.5, 0.5]), gt)
    assert blended < min(member_errors)
    assert blended < 0.8 * np.mean(member_errors)


def test_cli_ensemble_scores_no_worse_than_its_members_and_writes_predicts_files(evaluation_members, tmp_path,
                                                                                 capsys):
    (a, b), split = evaluation_members
    code, out, err = run_cli([a, b, "--out", tmp_path / "ens", "--name", "pair", "--viz", "1"], capsys)
    assert code == 0, err
    assert [p.name for p in (tmp_path / "ens_viz").iterdir()] == ["0000.png"]
    for suffix in (".npz", ".zip", ".metrics.json", ".ensemble.json"):
        assert (tmp_path / f"ens{suffix}").is_file(), suffix
    blended = json.loads((tmp_path / "ens.metrics.json").read_text())["reflections_allowed"]["pa_mpjpe_mm"]
    members = [pa_mpjpe_mm(load_predictions(p)["xyz"], split.xyz) for p in (a, b)]
    assert blended <= np.mean(members)
    record = load_predictions(tmp_path / "ens.npz")
    np.testing.assert_allclose(record["xyz"], (load_predictions(a)["xyz"]
                                               + load_predictions(b)["xyz"]) / 2)
    assert record["arch"] == "ensemble" and list(record["weights"]) == [0.5, 0.5]
    report = json.loads((tmp_path / "ens.ensemble.json").read_text())
    assert report["name"] == "pair" and report["weights_source"] == "equal"
    assert report["members"] == [str(a), str(b)]
    assert read_freihand_zip(tmp_path / "ens.zip")[0].shape == (20, 21, 3)
    assert "constant-shape baseline" in out and "camera MPJPE mm" in out and "root >10cm" in out


def test_given_weights_are_normalised_and_recorded(evaluation_members, tmp_path, capsys):
    (a, b), _ = evaluation_members
    code, _, err = run_cli([a, b, "--weights", "3", "1", "--out", tmp_path / "ens", "--format", "mp21",
                            "--joint-order", "ait"], capsys)
    assert code == 0, err
    expected = 0.75 * load_predictions(a)["xyz"] + 0.25 * load_predictions(b)["xyz"]
    np.testing.assert_allclose(load_predictions(tmp_path / "ens.npz")["xyz"], expected)
    report = json.loads((tmp_path / "ens.ensemble.json").read_text())
    assert report["weights"] == [0.75, 0.25] and report["weights_source"] == "given"
    assert (tmp_path / "ens" / "test_preds.json.gz").is_file() and not (tmp_path / "ens.zip").exists()


def test_fitted_weights_favour_the_better_member(mp21, tmp_path, capsys):
    """Members with 2 mm and 8 mm validation noise: the fit leans on the better one (the optimum for independent
    noise is 64 / 68 = 0.94), the blend beats both on validation, and ensemble.json records it all."""
    val, test = load_split(mp21, "val"), load_split(mp21, "test")
    members = []
    for name, sigma, seed in (("good", 0.002, 1), ("poor", 0.008, 2)):
        run = tmp_path / "runs" / name
        write_member(run / "val_pred.npz", noisy(val.xyz, sigma, seed), val.image_ids, "val")
        test_xyz = noisy(np.full((len(test), 21, 3), 0.6), sigma, seed + 10)
        members.append(write_member(tmp_path / f"{name}_test.npz", test_xyz, test.image_ids, "test", layout="mp21",
                                    data_root=str(mp21), run_dir=str(run)))
    code, out, err = run_cli([*members, "--fit-weights", "--out", tmp_path / "ens"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "ens.ensemble.json").read_text())
    assert report["weights_source"] == "fitted" and report["weights"][0] > 0.8
    assert sum(report["weights"]) == pytest.approx(1.0)
    validation = report["validation"]
    assert validation["n"] == 24 and validation["blend_pa_mpjpe_mm"] < min(validation["members_pa_mpjpe_mm"])
    assert validation["files"] == [str(tmp_path / "runs" / n / "val_pred.npz") for n in ("good", "poor")]
    with gzip.open(tmp_path / "ens" / "test_preds.json.gz", "rt") as f:
        assert np.array(json.load(f)).shape == (24, 21, 3)                  # mp21 layout -> mp21 upload
    assert not (tmp_path / "ens.metrics.json").exists()                      # the test split has no labels


def write_fold_set(root, runs, seed, sigma, folds=3, skip=()):
    """K run folders (config.json + out-of-fold val_pred.npz with ``sigma`` metres of noise) of one recipe and
    seed; returns the first."""
    for fold in range(folds):
        if fold in skip:
            continue
        run = runs / f"family{seed}_fold{fold}"
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"recipe": "r", "seed": seed, "folds": folds, "fold": fold}))
        val = load_split(root, "val", folds, fold)
        write_member(run / "val_pred.npz", noisy(val.xyz, sigma, seed * 10 + fold), val.image_ids, "val")
    return runs / f"family{seed}_fold{min(set(range(folds)) - set(skip))}"


def test_fitted_weights_on_complete_fold_sets_use_every_out_of_fold_prediction(marker_set_12, tmp_path, capsys):
    """Two 3-fold families in one runs folder (told apart by their configs): each member's validation set is
    its family's out-of-fold predictions, i.e. every training image once."""
    root = marker_set_12
    evaluation = load_split(root, "evaluation")
    members = []
    for seed, sigma in ((1, 0.002), (2, 0.008)):
        run = write_fold_set(root, tmp_path / "runs", seed, sigma)
        members.append(write_member(tmp_path / f"m{seed}.npz", noisy(evaluation.xyz, sigma, seed),
                                    evaluation.image_ids, "evaluation", layout="freihand", data_root=str(root),
                                    run_dir=str(run)))
    code, out, err = run_cli([*members, "--fit-weights", "--out", tmp_path / "ens"], capsys)
    assert code == 0, err
    validation = json.loads((tmp_path / "ens.ensemble.json").read_text())["validation"]
    assert validation["n"] == 12
    assert json.loads((tmp_path / "ens.ensemble.json").read_text())["weights"][0] > 0.8


def test_an_incomplete_fold_set_is_one_line_naming_the_missing_fold(marker_set_12, tmp_path, capsys):
    root = marker_set_12
    evaluation = load_split(root, "evaluation")
    members = [write_member(tmp_path / f"m{seed}.npz", evaluation.xyz, evaluation.image_ids, "evaluation",
                            layout="freihand", data_root=str(root),
                            run_dir=str(write_fold_set(root, tmp_path / "runs", seed, 0.002, skip=skip)))
               for seed, skip in ((1, ()), (2, (1,)))]
    code, _, err = run_cli([*members, "--fit-weights", "--out", tmp_path / "ens"], capsys)
    assert code == 2 and err.count("\n") == 1 and "lacks fold(s) 1" in err and "--folds 3 --fold 1" in err


def test_fitting_is_deterministic_and_never_worse_than_the_best_member():
    gt = np.random.default_rng(3).normal(0, 0.03, (40, 21, 3)) + [0, 0, 0.6]
    stack = np.stack([noisy(gt, 0.004, 4), noisy(gt, 0.02, 5), noisy(gt, 0.03, 6)])
    weights = ensembling.fit_weights(stack, gt)
    np.testing.assert_array_equal(weights, ensembling.fit_weights(stack, gt))
    assert (weights >= 0).all() and weights.sum() == pytest.approx(1.0)
    best_member = min(ensembling.val_error(stack, gt, one) for one in np.eye(3))
    assert ensembling.val_error(stack, gt, weights) <= best_member


def test_members_whose_data_is_gone_still_make_an_upload(evaluation_members, tmp_path, capsys):
    """The data root the members record no longer exists: the files are written, nothing is scored."""
    (a, b), _ = evaluation_members
    moved = []
    for path in (a, b):
        record = load_predictions(path)
        moved.append(write_member(tmp_path / path.name, **{**record, "data_root": str(tmp_path / "gone")}))
    code, out, err = run_cli([*moved, "--out", tmp_path / "ens"], capsys)
    assert code == 0, err
    assert (tmp_path / "ens.zip").is_file() and not (tmp_path / "ens.metrics.json").exists()
    assert check_file(tmp_path / "ens.npz").startswith("OK: ")


def test_without_members_the_newest_prediction_of_each_run_in_submissions_is_used(freihand, tmp_path):
    split = load_split(freihand, "evaluation")
    common = {"ids": split.image_ids, "layout": "freihand", "data_root": str(freihand)}

    def member(name, run, split_name, age_s, **changes):
        path = write_member(tmp_path / f"{name}.npz", noisy(split.xyz, 0.006, len(name)), split=split_name,
                            run_dir=run, **{**common, **changes})
        os.utime(path, (1e9 - age_s, 1e9 - age_s))
        return path

    newest_a = member("a_tta10", "runs/a", "evaluation", 0)
    member("a_tta1", "runs/a", "evaluation", 10)           # older prediction of the same run
    newest_b = member("b_tta10", "runs/b", "evaluation", 20)
    member("c_val", "runs/c", "val", 30)                   # another split
    member("d_other", "runs/d", "evaluation", 40, data_root="/another/dataset")   # another dataset, same ids
    member("ensemble_x", "", "evaluation", 5)              # an ensemble's output records no run
    assert ensembling.default_members(tmp_path) == sorted([newest_a, newest_b])

    for path in (newest_b, tmp_path / "a_tta1.npz"):
        path.unlink()
    with pytest.raises(UserError, match=r"predictions of 1 run\(s\); an ensemble needs two"):
        ensembling.default_members(tmp_path)


# --- errors -----------------------------------------------------------------------------------------------------

def assert_one_line_error(code, err, *fragments):
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err


@pytest.mark.parametrize("change, fragment", [
    ("split", "predict different splits ('evaluation' vs 'val')"),
    ("length", "different numbers of predictions (20 vs 19)"),
    ("ids", "differ in image ids from row 3 (id 3 vs 99)")])
def test_members_that_do_not_match_fail_with_one_line_naming_both(evaluation_members, tmp_path, capsys, change,
                                                                  fragment):
    (a, _), _ = evaluation_members
    record = load_predictions(a)
    xyz, ids, split = record["xyz"], record["ids"].copy(), record["split"]
    if change == "split":
        split = "val"
    if change == "length":
        xyz, ids = xyz[:19], ids[:19]
    if change == "ids":
        ids[3] = 99
    other = write_member(tmp_path / "other.npz", xyz, ids, split)
    code, _, err = run_cli([a, other, "--out", tmp_path / "ens"], capsys)
    assert_one_line_error(code, err, str(a), str(other), fragment)
    assert not list(tmp_path.glob("ens*"))


@pytest.mark.parametrize("extra, fragment", [
    (["--weights", "1"], "1 weights for 2 members"),
    (["--weights", "1", "-1"], "must be non-negative"),
    (["--weights", "1", "1", "--fit-weights"], "exclude each other"),
    (["--fit-weights"], "records no run folder"),
    (["--format", "csv"], "--format 'csv': choose one of freihand, mp21"),
    (["--joint-order", "mano"], "always in FreiHAND order")])
def test_bad_options_are_one_line_and_write_nothing(evaluation_members, tmp_path, capsys, extra, fragment):
    (a, b), _ = evaluation_members
    code, _, err = run_cli([a, b, "--out", tmp_path / "ens", *extra], capsys)
    assert_one_line_error(code, err, fragment)
    assert not list(tmp_path.glob("ens*"))


def test_unreadable_members_are_one_line(evaluation_members, tmp_path, capsys):
    (a, _), _ = evaluation_members
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really")
    np.savez(tmp_path / "foreign.npz", weights=np.zeros(3))
    for path, fragment in [(tmp_path / "broken.npz", "not a readable .npz"), (tmp_path / "foreign.npz", "lacks xyz"),
                           (tmp_path / "missing.npz", "does not exist")]:
        code, _, err = run_cli([a, path, "--out", tmp_path / "ens"], capsys)
        assert_one_line_error(code, err, str(path), fragment)
    code, _, err = run_cli([a, "--out", tmp_path / "ens"], capsys)
    assert_one_line_error(code, err, "at least two")
    assert not list(tmp_path.glob("ens*"))


# --- joint orders -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hand_members(hand_set, tmp_path_factory):
    """Two members predicting real hand shapes (the tiny synthetic set) with 4 mm noise each, FreiHAND order."""
    split = load_split(hand_set, "evaluation")
    folder = tmp_path_factory.mktemp("hand_members")
    common = {"ids": split.image_ids, "split": "evaluation", "layout": "freihand", "data_root": str(hand_set)}
    return [write_member(folder / f"{name}.npz", noisy(split.xyz, 0.004, seed), **common)
            for seed, name in enumerate(("a", "b"))], split


def test_ensemble_of_hands_writes_an_ait_upload_that_passes_the_check(hand_members, tmp_path, capsys):
    (a, b), split = hand_members
    code, out, err = run_cli([a, b, "--out", tmp_path / "ens", "--format", "mp21"], capsys)
    assert code == 0, err
    assert "mp21 format, ait joint order; joints in ait order (recognised from the bones)" in out
    upload = tmp_path / "ens" / "test_preds.json.gz"
    assert "joints in ait order" in check_file(upload, data_root=split.root)
    blend = (load_predictions(a)["xyz"] + load_predictions(b)["xyz"]) / 2
    with gzip.open(upload, "rt") as f:
        np.testing.assert_allclose(np.array(json.load(f)), blend[:, ORDERS["ait"]] * 1000.0, atol=1e-3)


@pytest.mark.parametrize("order", ["ait", "mano"])
def test_members_in_different_joint_orders_are_one_line_naming_both(hand_members, tmp_path, capsys, order):
    (a, _), split = hand_members
    record = load_predictions(a)
    other = tmp_path / f"{order}.npz"
    np.savez(other, **{**record, "xyz": record["xyz"][:, ORDERS[order]]})   # not a writer of ours: it would refuse
    code, _, err = run_cli([a, other, "--out", tmp_path / "ens"], capsys)
    assert_one_line_error(code, err, str(a), str(other), f"different orders (freihand vs {order}")
    assert not list(tmp_path.glob("ens*"))


def test_a_member_in_another_order_is_refused_when_the_other_shows_none(hand_members, tmp_path, capsys):
    """The other member's joints form no hand (noise): the one in mano order is still refused, naming both orders."""
    (a, _), split = hand_members
    record = load_predictions(a)
    shapeless = write_member(tmp_path / "noise.npz", noisy(np.full_like(record["xyz"], 0.6), 0.03, 1),
                             record["ids"], "evaluation", layout="freihand")
    mano = tmp_path / "mano.npz"
    np.savez(mano, **{**record, "xyz": record["xyz"][:, ORDERS["mano"]]})
    code, _, err = run_cli([shapeless, mano, "--out", tmp_path / "ens"], capsys)
    assert_one_line_error(code, err, str(mano), "the joints are in mano order, not freihand")
    assert not list(tmp_path.glob("ens*"))


# --- end to end: train.py runs -> predict.py --tta 10 -> ensemble.py --fit-weights --------------------------------

@pytest.mark.slow
def test_train_predict_with_tta_and_ensemble_end_to_end(synthetic_64, tmp_path, capsys):
    """Two tiny train.py runs on a tiny synthetic set; predict.py --tta 10 through the command line on one, in
    this process on the other; ensemble.py --fit-weights through the command line, on the runs' val_pred.npz."""
    data = synthetic_64
    runs = [tmp_path / f"run{seed}" for seed in (0, 1)]
    for seed, run in enumerate(runs):
        train.main(["--arch", "ghost_lite", "--data-root", str(data), "--epochs", "1", "--img-size", "64",
                    "--batch-size", "4", "--pretrained", "none", "--workers", "0", "--augs", "rotate",
                    "--seed", str(seed), "--out", str(run)])
        assert (run / "best.pt").is_file() and (run / "val_pred.npz").is_file()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "predict.py", "--ckpt", str(runs[0] / "best.pt"), "--tta", "10",
                           "--out", str(tmp_path / "p0"), "--workers", "0"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "TTA over 10 rotations" in done.stdout and "PA-MPJPE" in done.stdout
    predict.main(["--ckpt", str(runs[1] / "best.pt"), "--tta", "10", "--out", str(tmp_path / "p1"),
                  "--workers", "0"])
    for name in ("p0", "p1"):
        scores = json.loads((tmp_path / f"{name}.metrics.json").read_text())
        assert scores["tta"] == 10 and scores["n"] == 6 and np.isfinite(scores["reflections_allowed"]["pa_mpjpe_mm"])
    done = subprocess.run([sys.executable, "ensemble.py", str(tmp_path / "p0.npz"), str(tmp_path / "p1.npz"),
                           "--fit-weights", "--out", str(tmp_path / "ens")],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "ens.ensemble.json").read_text())
    assert report["validation"]["files"] == [str(run / "val_pred.npz") for run in runs]
    assert report["validation"]["blend_pa_mpjpe_mm"] <= min(report["validation"]["members_pa_mpjpe_mm"]) + 1e-9
    assert check_file(tmp_path / "ens.zip", data_root=data).startswith("OK: ")
    capsys.readouterr()
