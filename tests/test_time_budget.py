"""The time budget (training/time_budget.py): a run whose epochs would take longer than ``--budget-minutes`` on this
machine trains as many as fit, its stages keeping their fractions; one they fit is the recipe's run to the bit; a
resumed run keeps the epochs its start chose; a budget too short for any run, or not a number of minutes, is one
line before any work."""
import json
import signal

import pytest

import train
from training import time_budget
from tests.scripts import TINY, act_at_forward, assert_one_line_error, assert_same_run, log_epochs, run_main

STAGED = ["--epochs", "10", "--set", 'stages=[{"fraction": 0.3, "img_size": 96}]']  # 7 epochs at 64 px, 3 at 96
SECONDS = {64: 60.0, 96: 120.0}  # an epoch's seconds at each size, as a slow machine would time them


@pytest.fixture
def slow_machine(monkeypatch):
    """Epochs timed at SECONDS, whatever this machine's speed; returns the sizes timed, in order."""
    timed = []

    def seconds(config, model, inputs, device, size):
        timed.append(size)
        return SECONDS[size]
    monkeypatch.setattr(time_budget, "epoch_seconds", seconds)
    return timed


def test_the_most_epochs_that_fit_keep_the_stages_shape():
    config = {"epochs": 10, "img_size": 64, "stages": [{"fraction": 0.3, "img_size": 96}], "budget_minutes": 7.0,
              "warmup_epochs": 1.0, "final_epochs": 0}
    # 10 epochs: 7 x 60 s + 3 x 120 s = 13 min; 5: 3 x 60 + 2 x 120 = 7 min, over 95 % of 7; 4: 3 x 60 + 120 = 5 min
    assert time_budget.predicted_seconds(config, 10, SECONDS) == 780
    assert time_budget.fitting_epochs(config, SECONDS) == 4
    assert time_budget.fitting_epochs({**config, "budget_minutes": 13.0 / 0.95}, SECONDS) == 10  # never more
    assert time_budget.fitting_epochs({**config, "budget_minutes": 0.5}, SECONDS) == 0  # one epoch is 1 min
    assert time_budget.fitting_epochs({**config, "warmup_epochs": 5.0}, SECONDS) == 0   # no shorter than warm-up


def test_a_tight_budget_trains_the_epochs_that_fit_and_its_resume_keeps_them(synthetic_96, slow_machine, tmp_path,
                                                                             monkeypatch, capsys,
                                                                             terminal_stop_signals):
    folder = tmp_path / "run"
    args = [*TINY, *STAGED, "--budget-minutes", "7", "--data-root", synthetic_96, "--out", folder]
    act_at_forward(monkeypatch, 9 + 2, lambda: signal.raise_signal(signal.SIGTERM))  # epoch 2 (9 batches an epoch)
    code, out, err = run_main(train.main, args, capsys)
    assert code == 143, err
    assert ("time budget of 7 min: 10 epochs would take 13 min on this machine (60 s an epoch at 64 px, 120 s an "
            "epoch at 96 px); training 4 epochs (64 px, then 96 px for epochs 4-4), about 5 min") in out
    assert slow_machine == [64, 96]
    assert json.loads((folder / "config.json").read_text())["epochs"] == 4
    monkeypatch.undo()
    monkeypatch.setattr(time_budget, "epoch_seconds", lambda *a: pytest.fail("a resumed run timed its epochs again"))
    code, out, err = run_main(train.main, [*args, "--resume"], capsys)
    assert code == 0, err
    assert log_epochs(folder) == [1, 2, 3, 4]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["budget_minutes"] == 7.0 and summary["train_minutes"] > 0
    assert [(s["epochs"], s["img_size"]) for s in summary["stages"]] == [([1, 3], 64), ([4, 4], 96)]


def test_a_budget_the_epochs_fit_leaves_the_run_as_without_one_to_the_bit(synthetic_96, tmp_path, capsys):
    """Timed for real on this machine: 3 tiny epochs fit in 10 hours, and timing them took nothing from the
    random streams or the weights the run trains."""
    args = [*TINY, "--epochs", "3", "--set", 'stages=[{"fraction": 0.3, "img_size": 96}]', "--set", "ema_decay=0.9",
            "--data-root", synthetic_96]
    train.main([str(a) for a in [*args, "--out", tmp_path / "plain"]])
    code, out, err = run_main(train.main, [*args, "--budget-minutes", "600", "--out", tmp_path / "budget"], capsys)
    assert code == 0, err
    assert "time budget of 600 min: the 3 epochs take about" in out
    assert_same_run(tmp_path / "plain", tmp_path / "budget")


@pytest.mark.parametrize("budget, fragment", [
    ("0.01", "budget_minutes=0.01: not even the shortest run of these stages fits on this machine (60 s an epoch at "
             "64 px, 120 s an epoch at 96 px); give more --budget-minutes"),
    ("-1", "budget_minutes=-1.0: must lie in [0.0, inf]"),
])
def test_a_budget_no_run_fits_or_not_minutes_is_one_line_before_any_epoch(budget, fragment, synthetic_96, slow_machine,
                                                                          tmp_path, capsys):
    code, _, err = run_main(train.main, [*TINY, *STAGED, "--budget-minutes", budget, "--data-root", synthetic_96,
                                         "--out", tmp_path / "run"], capsys)
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "run").exists()
