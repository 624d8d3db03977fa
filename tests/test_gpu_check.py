"""The prepared GPU check's CPU dry run: every step runs at tiny sizes and its figures reach gpu_check.json."""
import json
import math
import subprocess
import sys

import pytest

from core.common import PROJECT_ROOT
from tools import gpu_check


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_step_and_writes_its_figures(tmp_path):
    done = subprocess.run([sys.executable, "tools/gpu_check.py", "--dry-run", "--out", str(tmp_path / "check"),
                           "--wheels", str(tmp_path / "no_wheels")], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=900)
    report = json.loads((tmp_path / "check" / "gpu_check.json").read_text())
    assert done.returncode == 0, (done.stdout, report)
    steps = report["steps"]
    assert list(steps) == ["install", "pytest_cuda", "synthetic_set", "bench", "train_and_predict"]
    assert all(step["passed"] for step in steps.values())
    assert steps["install"]["installed"] == []
    cuda = steps["pytest_cuda"]
    assert cuda["tests"] > 10 and cuda["failures"] == 0 and cuda["skipped"] == cuda["tests"]   # no GPU here
    bench = steps["bench"]
    assert bench["stages"]["train_step/effb0_unet_64_cpu"] > 0 and 0 < bench["augment_share"]["effb0_unet_64_cpu"] < 1
    trained = steps["train_and_predict"]
    assert trained["epochs"] == 2 and math.isfinite(trained["fraction_of_constant_shape"]) and trained["tta"] == 2
    assert [(s["epochs"], s["img_size"]) for s in trained["stage_records"]] == [([1, 1], 64), ([2, 2], 96)]
    assert trained["predicted_at_px"] == 96
    # offline on a GPU machine: from random weights whatever the recipe's pretrained setting
    assert "--pretrained none" in (tmp_path / "check" / "train.log").read_text().splitlines()[0]


def test_wheels_are_installed_only_for_missing_distributions(tmp_path, monkeypatch):
    for name in ("numpy-2.4.6-cp311-cp311-manylinux_2_17_x86_64.whl", "not_a_real_dist-1.0-py3-none-any.whl"):
        (tmp_path / name).write_bytes(b"")
    commands = []
    monkeypatch.setattr(gpu_check, "run_logged", lambda command, log: commands.append(command) or (0.0, 0))
    result = gpu_check.install_missing(tmp_path, tmp_path / "install.log")
    assert result == {"wheels_found": 2, "installed": ["not-a-real-dist"]}
    assert commands[0][-1].endswith("not_a_real_dist-1.0-py3-none-any.whl") and "--no-deps" in commands[0]


def test_epochs_fill_the_budget():
    assert gpu_check.epochs_for(4.0, 1500.0, 19000) == 18
    assert gpu_check.epochs_for(4.0, None, 19000) == 1 and gpu_check.epochs_for(0.1, 10.0, 19000) == 1
    assert "torch" not in gpu_check.carried_distributions() and "timm" in gpu_check.carried_distributions()


def test_a_rerun_leaves_out_the_named_steps_and_refuses_unknown_ones(tmp_path, capsys):
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--skip", "bench,benchmark"])
    assert "--skip benchmark: not a step" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--train-epochs", "-1"])
    assert "--train-epochs -1" in capsys.readouterr().err
    everything = ",".join(gpu_check.STEPS)
    assert gpu_check.main(["--dry-run", "--skip", everything, "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "gpu_check.json").read_text())["steps"] == {}


def test_a_short_check_still_trains_one_epoch_in_the_final_stage(tmp_path, monkeypatch):
    commands = []
    monkeypatch.setattr(gpu_check, "run_logged", lambda command, log: commands.append(command) or (1.0, 1))
    figures, passed = gpu_check.train_and_predict(tmp_path, gpu_check.FULL, 4.0, None, epochs=7)
    assert not passed and figures["epochs"] == 7
    stages = json.loads(commands[0][commands[0].index("--set") + 1].removeprefix("stages="))
    assert stages[0]["img_size"] == gpu_check.FULL["final_size"] and round(stages[0]["fraction"] * 7) == 1
