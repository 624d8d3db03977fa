"""The time budget (training/time_budget.py): a run whose epochs would take longer than ``--budget-minutes`` on this
machine trains as many as fit, its stages keeping their fractions, and the first epochs' real time corrects the plan;
a run they fit is the recipe's run to the bit; a resumed run keeps the epochs planned; a budget too short for any
run, or not a number of minutes, is one line before any work."""
import json
import signal

import pytest

import train
from training import stages, time_budget
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


def test_a_tight_budget_plans_the_epochs_that_fit_and_the_first_epoch_s_real_time_replans_them(
        synthetic_96, slow_machine, tmp_path, monkeypatch, capsys, terminal_stop_signals):
    """Timed as a slow machine, the run plans 4 epochs; its first epoch takes a second or two, not 60 s, so it
    trains the 10 asked. A stop in epoch 3 resumes with those 10, without timing again, from the same command."""
    folder = tmp_path / "run"
    args = [*TINY, *STAGED, "--budget-minutes", "7", "--data-root", synthetic_96, "--out", folder]
    act_at_forward(monkeypatch, 2 * 9 + 2, lambda: signal.raise_signal(signal.SIGTERM))  # epoch 3 (9 batches each)
    code, out, err = run_main(train.main, args, capsys)
    assert code == 143, err
    assert ("time budget of 7 min: 10 epochs would take 13 min on this machine (60 s an epoch at 64 px, 120 s an "
            "epoch at 96 px); training 4 epochs (64 px, then 96 px for epochs 4-4), about 5 min") in out
    assert "time budget: an epoch at 64 px took" in out and "training 10 epochs (64 px, then 96 px for epochs " \
        "8-10)" in out
    assert slow_machine == [64, 96]
    config = json.loads((folder / "config.json").read_text())
    assert (config["epochs"], config["epochs_asked"]) == (10, 10)  # rewritten after the first epoch
    assert config["budget_epoch_seconds"] == {"64": 60.0, "96": 120.0}
    monkeypatch.undo()
    monkeypatch.setattr(time_budget, "epoch_seconds", lambda *a: pytest.fail("a resumed run timed its epochs again"))
    code, out, err = run_main(train.main, [*args, "--resume"], capsys)
    assert code == 0, err
    assert log_epochs(folder) == list(range(1, 11))
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["budget_minutes"] == 7.0 and summary["train_minutes"] > 0
    assert [(s["epochs"], s["img_size"]) for s in summary["stages"]] == [([1, 7], 64), ([8, 10], 96)]


def budgeted(history_seconds, **changes):
    """A config planned at 10 s an epoch at 64 px and 20 s at 96 px, and the log's rows of its first epochs."""
    config = {"epochs": 10, "epochs_asked": 10, "img_size": 64, "stages": [{"fraction": 0.3, "img_size": 96}],
              "budget_minutes": 2.5, "warmup_epochs": 1.0, "final_epochs": 0, "schedule": "cosine",
              "budget_epoch_seconds": {"64": 10.0, "96": 20.0}, **changes}
    return config, [{"epoch": e, "epoch_seconds": s} for e, s in enumerate(history_seconds, start=1)]


def test_an_epoch_slower_than_timed_shortens_the_run_and_keeps_the_epochs_done_in_the_first_stage():
    config, history = budgeted([30.0])  # 3 times the timing: 10 epochs would take 390 s of the 142.5 s
    time_budget.replan(config, history)
    assert config["epochs"] == 3        # 2 x 30 s at 64 px + 1 x 60 s at 96 px = 120 s
    config, history = budgeted([31.0, 30.0])  # the median of two, their mean; epochs 1-2 stay at 64 px
    time_budget.replan(config, history)
    assert config["epochs"] == 3
    for slow_one in ([10.0, 10.0, 30.0], [30.0, 10.0, 10.0]):  # a busy epoch, or the first's one-off costs: the
        config, history = budgeted(slow_one, epochs=4)         # median of three leaves them out
        time_budget.replan(config, history)
        assert config["epochs"] == 10  # 7 x 10 s + 3 x 20 s = 130 s
    config, history = budgeted([60.0, 60.0])  # none that keeps epochs 1-2 at 64 px fits: the fewest that do
    time_budget.replan(config, history)
    assert config["epochs"] == 3
    config, history = budgeted([10.0] * 2 + [30.0] * 3)  # every first-stage epoch counts: a median of 30 s after
    time_budget.replan(config, history)                   # epoch 5, the fewest epochs that keep 1-5 at 64 px
    assert config["epochs"] == 7
    for config, history in (budgeted([10.0] * 7 + [30.0]), budgeted([30.0], schedule="onecycle"),
                            budgeted([30.0], budget_epoch_seconds=None), budgeted([30.0], budget_minutes=0.0)):
        time_budget.replan(config, history)  # past the first stage (epochs 1-7), under OneCycleLR, not budgeted or
        # resumed with --budget-minutes 0
        assert config["epochs"] == 10


def test_inside_the_last_stage_its_own_epochs_re_plan_its_end_and_its_first_epoch_stays():
    config, history = budgeted([10.0] * 7 + [30.0])  # 7 x 10 s at 64 px, then 96 px: 30 s, not the 20 s timed
    time_budget.fix_stages(config)                    # entering epoch 8, the last stage's first
    assert config["stage_starts"] == [[1, 64], [8, 96]]
    assert time_budget.replan(config, history)
    assert config["epochs"] == 9                      # 100 s done, 42.5 s left of the 142.5: one more at 30 s
    assert [(s.first_epoch, s.last_epoch, s.img_size) for s in stages.plan(config)] == [(1, 7, 64), (8, 9, 96)]
    config, history = budgeted([10.0] * 7 + [30.0, 30.0])  # 130 s done: no time for another, the run ends now
    time_budget.fix_stages(config)
    assert time_budget.replan(config, history) and config["epochs"] == 9
    config, history = budgeted([10.0] * 7 + [5.0], epochs_asked=12)  # faster than timed: the asked 12, no more
    time_budget.fix_stages(config)
    assert time_budget.replan(config, history) and config["epochs"] == 12
    assert stages.plan(config)[-1].first_epoch == 8
    # the median of the stage's epochs (30 s), not the latest (10 s) nor the mean: 145 s of 285 left, 4 more
    config, history = budgeted([10.0] * 7 + [30.0, 30.0, 10.0], epochs_asked=20, budget_minutes=5.0)
    time_budget.fix_stages(config)
    assert time_budget.replan(config, history) and config["epochs"] == 14
    for config, history in (budgeted([10.0] * 7 + [30.0], budget_minutes=0.0),   # resumed with --budget-minutes 0
                            budgeted([10.0] * 7 + [30.0], schedule="onecycle")):
        config["stage_starts"] = [[1, 64], [8, 96]]
        assert not time_budget.replan(config, history) and config["epochs"] == 10


def test_only_a_budgeted_run_of_several_stages_fixes_their_first_epochs():
    for changes in ({"budget_minutes": 0.0}, {"budget_epoch_seconds": None}, {"stages": []}):
        config, _ = budgeted([], **changes)
        time_budget.fix_stages(config)
        assert "stage_starts" not in config
    config, _ = budgeted([])
    time_budget.fix_stages(config)
    config["epochs"] = 8  # from the fractions alone, 8 epochs would start the last stage at epoch 7
    assert [(s.first_epoch, s.last_epoch) for s in stages.plan(config)] == [(1, 7), (8, 8)]


def test_a_budgeted_run_stopped_inside_its_last_stage_resumes_to_the_weights_of_one_never_stopped(
        synthetic_96, slow_machine, tmp_path, monkeypatch, capsys, terminal_stop_signals):
    """The last stage's first epoch, fixed when the run enters it, travels in last.pt: the resumed run is the same."""
    args = [*TINY, "--epochs", "3", "--set", 'stages=[{"fraction": 0.3, "img_size": 96}]', "--budget-minutes", "10",
            "--data-root", synthetic_96]
    straight, folder = tmp_path / "straight", tmp_path / "stopped"
    code, _, err = run_main(train.main, [*args, "--out", straight], capsys)
    assert code == 0, err
    act_at_forward(monkeypatch, 9 * 2 + 3, lambda: signal.raise_signal(signal.SIGTERM))  # epoch 3 (9 batches each)
    code, _, err = run_main(train.main, [*args, "--out", folder], capsys)
    assert code == 143, err
    monkeypatch.undo()
    monkeypatch.setattr(time_budget, "epoch_seconds", lambda *a: pytest.fail("a resumed run timed its epochs again"))
    code, out, err = run_main(train.main, [*args, "--out", folder, "--resume"], capsys)
    assert code == 0, err
    assert_same_run(straight, folder)
    for run in (straight, folder):
        assert json.loads((run / "config.json").read_text())["stage_starts"] == [[1, 64], [3, 96]]


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


def test_the_deadline_counts_the_epochs_done_and_the_next_at_its_size():
    config, _ = budgeted([])
    rows = [{"epoch": e, "epoch_seconds": 20.0, "img_size": 64} for e in range(1, 7)]   # 120 s of the 142.5 s the
    assert not time_budget.past_deadline(config, rows)            # epochs may take (95 % of 150 s); epoch 7: 140 s
    assert time_budget.past_deadline(config, rows[:5] + [{"epoch": 6, "epoch_seconds": 24.0, "img_size": 64}])  # 148 s
    # epoch 8 is the first at 96 px: its timing (20 s) scaled as the latest epoch ran against its timing
    assert time_budget.past_deadline(config, rows + [{"epoch": 7, "epoch_seconds": 20.0, "img_size": 64}])  # 40 s
    assert time_budget.past_deadline(config, rows[:5] + [{"epoch": 6, "epoch_seconds": 20.0, "img_size": 64},
                                                         {"epoch": 7, "epoch_seconds": 1.0, "img_size": 64}]) is False
    assert not time_budget.past_deadline({**config, "budget_epoch_seconds": None}, rows * 3)
    assert not time_budget.past_deadline(config, [])


def test_a_run_past_its_deadline_ends_after_the_epoch_done_and_resumes_without_one(synthetic_96, tmp_path,
                                                                                   monkeypatch, capsys):
    folder = tmp_path / "run"
    args = [*TINY, *STAGED, "--data-root", synthetic_96, "--out", folder]
    monkeypatch.setattr(time_budget, "past_deadline", lambda config, history: len(history) >= 2)
    code, out, err = run_main(train.main, [*args, "--budget-minutes", "600"], capsys)
    assert code == 0, err
    assert (f"time budget: the next epoch would end past 570 of the 600 min (the rest starts and ends the run); "
            f"ending after epoch 2 of 10 (the rest, past the "
            f"budget: python train.py --out {folder} --resume --budget-minutes 0)") in out
    assert log_epochs(folder) == [1, 2] and json.loads((folder / "summary.json").read_text())["epochs"] == 2
    code, out, err = run_main(train.main, [*args, "--resume", "--budget-minutes", "0"], capsys)
    assert code == 0, err
    assert log_epochs(folder) == list(range(1, 11))
