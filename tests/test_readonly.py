"""A data root the process cannot write into trains, predicts, ensembles and checks as a writable one, and no file
in it changes or appears. Tests may run as root, where permissions do not stop a write: the tree's listing, bytes
and modification times are compared before and after as well."""
import hashlib
import json
import os
import stat

import pytest

import ensemble
import predict
import train
from data import synthetic
from data.derived import derived_folder
from data.readers import VAL_SPLIT_FILE
from tests.scripts import run_main

TINY = ["--arch", "ghost_lite", "--epochs", "1", "--img-size", "64", "--batch-size", "4", "--pretrained", "none",
        "--workers", "0", "--device", "cpu"]


def snapshot(root):
    """{relative path: (mode, bytes, mtime_ns, sha256)} of every file and folder under ``root``."""
    state = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            digest = None
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            state[os.path.relpath(path, root)] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return state


def set_writable(root, writable):
    for folder, dirs, files in os.walk(root):
        for path in [folder] + [os.path.join(folder, f) for f in files]:
            mode = os.stat(path).st_mode
            os.chmod(path, mode | stat.S_IWUSR if writable else mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


@pytest.fixture
def read_only_data(tmp_path, monkeypatch):
    """A tiny synthetic set made read-only, the project's writable roots moved into ``tmp_path``."""
    data = tmp_path / "data"
    synthetic.main(["--out", str(data), "--train", "24", "--eval", "8", "--seed", "1", "--size", "96",
                    "--workers", "1"])
    for kind in ("CACHE", "RUNS", "SUBMISSIONS", "SYNTHETIC"):
        monkeypatch.setenv(f"HANDPOSE_{kind}", str(tmp_path / kind.lower()))
    set_writable(data, False)
    yield data
    set_writable(data, True)


def test_a_read_only_data_root_trains_predicts_ensembles_and_checks_and_stays_unchanged(read_only_data, tmp_path,
                                                                                         capsys):
    before = snapshot(read_only_data)
    run = tmp_path / "run"
    code, _, err = run_main(train.main, TINY + ["--data-root", read_only_data, "--out", run], capsys)
    assert code in (0, None), err
    assert (run / "best.pt").is_file()
    assert (derived_folder(read_only_data) / VAL_SPLIT_FILE).is_file()   # the split lives under the cache root
    assert str(derived_folder(read_only_data)).startswith(str(tmp_path / "cache"))
    for name, tta in (("p0", "1"), ("p1", "2")):
        code, _, err = run_main(predict.main, ["--ckpt", run / "best.pt", "--tta", tta, "--workers", "0",
                                               "--device", "cpu", "--out", tmp_path / name], capsys)
        assert code in (0, None), err
    code, _, err = run_main(ensemble.main, [tmp_path / "p0.npz", tmp_path / "p1.npz", "--out", tmp_path / "ens"],
                            capsys)
    assert code in (0, None), err
    code, out, err = run_main(predict.main, ["--check", tmp_path / "ens.zip", "--data-root", read_only_data], capsys)
    assert code in (0, None) and out.startswith("OK: "), err
    assert snapshot(read_only_data) == before
    assert not (read_only_data / VAL_SPLIT_FILE).exists()


def test_an_old_val_split_in_the_data_root_is_still_read(read_only_data, tmp_path):
    from data.readers import load_split
    set_writable(read_only_data, True)
    (read_only_data / VAL_SPLIT_FILE).write_text(json.dumps({"num_annotations": 24, "val_ann_ids": [3, 5]}))
    set_writable(read_only_data, False)
    assert sorted(set(load_split(read_only_data, "val").ann_ids.tolist())) == [3, 5]
    assert not derived_folder(read_only_data).exists()


def test_two_data_roots_never_share_their_derived_folder(read_only_data, tmp_path):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(read_only_data, copy)
    assert derived_folder(copy) != derived_folder(read_only_data)
    set_writable(copy, True)
    (copy / "training_K.json").write_text((copy / "training_K.json").read_text() + " ")
    first = derived_folder(copy)
    (copy / "training_K.json").write_text((copy / "training_K.json").read_text() + " ")
    assert derived_folder(copy) != first     # annotations changed: another dataset
