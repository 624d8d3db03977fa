"""Every place the project writes moves with its environment variable (HANDPOSE_CACHE, _RUNS, _SUBMISSIONS,
_SYNTHETIC) or its flag; with them set, a whole train -> predict -> ensemble writes nothing into the project."""
import os
import shutil
import subprocess
import sys
from collections import namedtuple

import pytest

import ensemble
import predict
import train
from core import locations
from core.common import PROJECT_ROOT, UserError
from data import caches
from data.cache_store import open_cache
from data import synthetic
from data.readers import load_split
from tests.scripts import run_main

TINY = ["--arch", "ghost_lite", "--epochs", "1", "--img-size", "64", "--batch-size", "4", "--pretrained", "none",
        "--workers", "0", "--device", "cpu", "--set", "cache=true"]
KINDS = ("cache", "runs", "submissions", "synthetic")


def project_listing():
    """{path: mtime_ns} of every file and folder of the project, bytecode caches aside."""
    listing = {}
    for folder, dirs, files in os.walk(PROJECT_ROOT):
        dirs[:] = [d for d in dirs if d not in ("__pycache__", ".pytest_cache", ".git", ".ruff_cache")]
        for name in dirs + files:
            path = os.path.join(folder, name)
            listing[path] = os.lstat(path).st_mtime_ns
    return listing


@pytest.fixture
def moved(tmp_path, monkeypatch):
    """Every root moved into ``tmp_path`` by its variable: {kind: folder}."""
    roots = {kind: tmp_path / f"my_{kind}" for kind in KINDS}
    for kind, folder in roots.items():
        monkeypatch.setenv(locations.LOCATIONS[kind].env, str(folder))
    return roots


def test_defaults_lie_in_the_project_and_each_variable_moves_its_root(tmp_path, monkeypatch):
    for kind in KINDS:
        monkeypatch.delenv(locations.LOCATIONS[kind].env, raising=False)
        assert locations.root(kind).is_relative_to(PROJECT_ROOT)
        monkeypatch.setenv(locations.LOCATIONS[kind].env, "")            # empty: the default, as TORCH_HOME
        assert locations.root(kind).is_relative_to(PROJECT_ROOT)
        monkeypatch.setenv(locations.LOCATIONS[kind].env, str(tmp_path / kind))
        assert locations.root(kind) == tmp_path / kind
    assert {locations.LOCATIONS[k].env for k in KINDS} == {"HANDPOSE_CACHE", "HANDPOSE_RUNS", "HANDPOSE_SUBMISSIONS",
                                                           "HANDPOSE_SYNTHETIC"}


def test_a_flag_overrides_the_variable_for_the_command_and_the_processes_it_starts(moved, tmp_path):
    args = namedtuple("Args", "cache_dir runs_dir")(str(tmp_path / "flag_cache"), None)
    locations.apply_flags(args, "cache", "runs")
    assert locations.root("cache") == tmp_path / "flag_cache"
    assert locations.root("runs") == moved["runs"]                        # not given: the variable still holds
    shown = subprocess.run([sys.executable, "-c", "from core import locations; print(locations.root('cache'))"],
                           cwd=PROJECT_ROOT, capture_output=True, text=True, check=True).stdout.strip()
    assert shown == str(tmp_path / "flag_cache")


def test_train_predict_ensemble_with_every_root_moved_write_nothing_into_the_project(moved, tmp_path, capsys):
    data = tmp_path / "data"
    synthetic.main(["--out", str(data), "--train", "24", "--eval", "8", "--seed", "1", "--size", "96",
                    "--workers", "1"])
    before = project_listing()
    for extra in ([], ["--seed", "1", "--out", moved["runs"] / "second"]):   # the first named by the runs root
        code, _, err = run_main(train.main, TINY + ["--data-root", data] + extra, capsys)
        assert code in (0, None), err
    runs = sorted(p.parent for p in moved["runs"].glob("*/best.pt"))
    assert len(runs) == 2
    for run in runs:
        code, _, err = run_main(predict.main, ["--ckpt", run / "best.pt", "--workers", "0", "--device", "cpu"], capsys)
        assert code in (0, None), err
    assert len(list(moved["submissions"].glob("*.npz"))) == 2
    code, out, err = run_main(ensemble.main, [], capsys)                   # members: the submissions root's newest
    assert code in (0, None), err
    assert list(moved["submissions"].glob("ensemble_*.zip"))
    assert list(moved["cache"].glob("data-train-64px-*/manifest.json"))   # decoded images
    assert list(moved["cache"].glob("datasets/data-*/val_split.json"))   # the validation split
    code, out, _ = run_main(caches.main, ["--list"], capsys)
    assert code in (0, None) and str(moved["cache"]) in out
    assert project_listing() == before


def test_the_free_space_refusal_names_the_setting_that_moves_the_cache(moved, hand_set, monkeypatch):
    split = load_split(hand_set, "train")
    usage = namedtuple("usage", "total used free")(10, 10, 0)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage)
    with pytest.raises(UserError, match="HANDPOSE_CACHE=DIR or --cache-dir DIR"):
        open_cache(split, 32)
