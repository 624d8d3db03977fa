"""A data root the process cannot write into trains, predicts, ensembles and checks as a writable one, and no file
in it changes or appears. Tests may run as root, where permissions do not stop a write: writes into the data root
are also refused in the test's process (EROFS), and the tree's listing, bytes and modification times are compared
before and after."""
import builtins
import errno
import hashlib
import io
import json
import os
import stat
from pathlib import Path

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


def refuse_writes_under(root, monkeypatch):
    """Opening a file under ``root`` for writing, or making a folder there, fails as on a read-only file system
    (EROFS), in this process, whoever runs it (root ignores permission bits)."""
    root = str(Path(root).resolve())

    def under(path):
        return isinstance(path, (str, bytes, os.PathLike)) and os.path.realpath(os.fsdecode(path)).startswith(root)

    def refused(path):
        return OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    def guarded_open(opener, writes):
        def open_(path, *args, **kwargs):
            if under(path) and writes(*args, **kwargs):
                raise refused(path)
            return opener(path, *args, **kwargs)
        return open_
    file_writes = lambda mode="r", *_, **kwargs: any(c in kwargs.get("mode", mode) for c in "wax+")
    fd_writes = lambda flags, *_, **__: bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
    monkeypatch.setattr(builtins, "open", guarded_open(builtins.open, file_writes))
    monkeypatch.setattr(io, "open", guarded_open(io.open, file_writes))
    monkeypatch.setattr(os, "open", guarded_open(os.open, fd_writes))
    monkeypatch.setattr(os, "mkdir", guarded_open(os.mkdir, lambda *_, **__: True))


@pytest.fixture
def hand_data(tmp_path, monkeypatch):
    """A tiny synthetic set, the project's writable roots moved into ``tmp_path``."""
    data = tmp_path / "data"
    synthetic.main(["--out", str(data), "--train", "24", "--eval", "8", "--seed", "1", "--size", "96",
                    "--workers", "1"])
    for kind in ("CACHE", "RUNS", "SUBMISSIONS", "SYNTHETIC"):
        monkeypatch.setenv(f"HANDPOSE_{kind}", str(tmp_path / kind.lower()))
    return data


@pytest.fixture
def read_only_data(hand_data, monkeypatch):
    """``hand_data`` made read-only: its permission bits, and writes into it refused in this process."""
    set_writable(hand_data, False)
    with monkeypatch.context() as patched:
        refuse_writes_under(hand_data, patched)
        yield hand_data
    set_writable(hand_data, True)


def test_writes_into_the_read_only_data_root_fail(read_only_data):
    """The fixture's guard itself: a write the project might make there fails, reading still works."""
    for write in (lambda: open(read_only_data / "x.json", "w"), lambda: (read_only_data / "x").write_text("x"),
                  lambda: os.open(read_only_data / "x", os.O_CREAT | os.O_WRONLY),
                  lambda: (read_only_data / "d").mkdir()):
        with pytest.raises(OSError, match="Read-only file system"):
            write()
    assert (read_only_data / "training_K.json").read_text().startswith("[")


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


def test_an_old_val_split_in_the_data_root_is_still_read(hand_data, monkeypatch):
    from data.readers import load_split
    (hand_data / VAL_SPLIT_FILE).write_text(json.dumps({"num_annotations": 24, "val_ann_ids": [3, 5]}))
    set_writable(hand_data, False)
    refuse_writes_under(hand_data, monkeypatch)
    assert sorted(set(load_split(hand_data, "val").ann_ids.tolist())) == [3, 5]
    assert not derived_folder(hand_data).exists()


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
