"""python -m data.check: what a good data root holds, each problem of a broken one as one line, nothing written."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from data import check, synthetic
from tests.markers import write_marker_dataset

ROOT_OF_PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    """FreiHAND layout: 3 training hands in 2 versions, 2 labelled evaluation hands, 64 px."""
    return synthetic.generate(tmp_path_factory.mktemp("check") / "set", 3, 2, seed=1, size=64, workers=1, versions=2)


def files_of(root):
    return sorted((p.relative_to(root), p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_a_good_freihand_root_is_described_and_nothing_is_written(tiny_set, capsys):
    before = files_of(tiny_set)
    check.main([str(tiny_set), "--decode"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith(": FreiHAND v2 layout")
    assert out[1] == "  training: 6 images = 3 annotations x 2 versions; labels: xyz, scale; 3 masks"
    assert out[2] == "  evaluation: 2 images = 2 annotations x 1 version; labels: xyz, scale"
    assert out[-1] == "no problems"
    assert files_of(tiny_set) == before  # not even the validation split is saved


def test_an_mp21_root_lists_its_three_splits(tmp_path, capsys):
    root = write_marker_dataset(tmp_path / "mp21", n=4, layout="mp21", n_eval=2)
    check.main([str(root)])
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith(": MP21 layout") and out[-1] == "no problems"
    assert [line.split(":")[0].strip() for line in out[1:-1]] == ["train", "val", "test"]
    assert "test: 2 images" in out[3] and "no test_xyz.json" in out[3]


def test_every_problem_of_a_broken_root_is_one_line_with_its_fix(tiny_set, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(tiny_set, root)
    (root / "training" / "rgb" / "00000002.jpg").unlink()                      # a gap in the images
    xyz = json.loads((root / "evaluation_xyz.json").read_text())
    (root / "evaluation_xyz.json").write_text(json.dumps(xyz[:1]))               # one label short
    done = subprocess.run([sys.executable, "-m", "data.check", str(root)], cwd=ROOT_OF_PROJECT,
                          capture_output=True, text=True)
    problems = done.stderr.strip().splitlines()
    assert done.returncode == 1 and done.stdout.strip().splitlines()[-1] == "2 problems"
    assert len(problems) == 2 and "Traceback" not in done.stderr
    assert problems[0].startswith("problem: training: partial dataset:") and "00000002.jpg is missing" in problems[0]
    assert "re-extract" in problems[0]
    assert problems[1].startswith("problem: evaluation:") and "evaluation_xyz.json has 1 entries" in problems[1]


def test_decode_names_a_corrupt_image(tiny_set, tmp_path, capsys):
    root = tmp_path / "corrupt"
    shutil.copytree(tiny_set, root)
    (root / "evaluation" / "rgb" / "00000001.jpg").write_bytes(b"not a jpeg")
    check.main([str(root)])  # without --decode the file names are all there
    assert capsys.readouterr().out.splitlines()[-1] == "no problems"
    with pytest.raises(SystemExit) as stop:
        check.main([str(root), "--decode"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 1 and len(err) == 1
    assert "evaluation: cannot decode image" in err[0] and "00000001.jpg" in err[0] and "replace it" in err[0]


def test_a_folder_without_a_dataset_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        check.main([str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and "no dataset at" in err[0]
