"""train.py: configuration errors, a real short run, exact resume after SIGKILL, SIGTERM, Ctrl-C and timed
saves inside an epoch (also under torchrun), --resume with the original command line, NaN stop, DDP."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from training import step
from training import recipes
from training import runlog
import train
from models.checkpoints import build_model, load_checkpoint
from training.checkpoints import save_checkpoint
from core.common import PROJECT_ROOT, UserError
from data.readers import load_split
from training.config import resolve_config, resume_config
from training.rundir import continue_command
from training.setup import restored_progress
from tests.scripts import (TINY, act_at_forward, assert_same_run, log_epochs, run_main, run_train,
                           stop_signals_as_in_a_terminal)

# every training feature whose state must survive a resume and stay equal across DDP ranks
FEATURES = ["--set", "ema_decay=0.9", "--set", "accumulate=2", "--set", "schedule=cosine", "--set", "warmup_epochs=1",
            "--set", "min_lr_ratio=0.1", "--set", "optimizer=adamw", "--set", "weight_decay=0.01",
            "--set", "average_top_k=2", "--set", "final_epochs=1", "--set", "augs_final=none"]


# --- configuration ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--arch", "no_such_net"], "unknown arch 'no_such_net'; valid names: effb0_1d"),
    (["--arch", "effb0_1d", "--set", "no_such_key=1"], "unknown config key 'no_such_key'"),
    (["--arch", "effb0_1d", "--set", "epochs=many"], "epochs='many': expected int"),
    (["--arch", "effb0_1d", "--set", "amp=1"], "amp=1: expected bool"),
    (["--arch", "effb0_1d", "--set", "loss.no_such_term=1"], "unknown loss keys ['no_such_term']"),
    (["--arch", "effb0_1d", "--augs", "rotate,spin"], "spin"),
    (["--arch", "effb0_1d", "--set", "optimizer=lion"], "optimizer='lion': choose one of adam, adamw, sgd"),
    (["--arch", "effb0_1d", "--set", "model.z_readout=rows"], "z_readout='rows': choose one of columns, pooled"),
    (["--arch", "effb0_1d", "--set", "model.bogus=1"], "unexpected keyword argument 'bogus'"),
    (["--arch", "effb0_1d", "--set", "loss.kl_tau=0"], "kl_tau=0: must be a positive number"),
    (["--arch", "effb0_1d", "--fold", "1"], "--fold 1 needs --folds K"),
    (["--arch", "effb0_1d", "--set", "augs_final=none"], "final_epochs=0"),
    (["--arch", "effb0_1d", "--set", "ema_decay=1.5"], "ema_decay=1.5: must lie in"),
    (["--arch", "effb0_1d", "--set", "schedule=onecycle", "--set", "warmup_epochs=1"], "onecycle warms up by itself"),
])
def test_bad_options_are_one_clear_line(args, message, capsys):
    code, _, err = run_main(train.main, args, capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_resume_without_checkpoint_is_one_clear_line(tmp_path, capsys):
    code, _, err = run_main(train.main, ["--arch", "ghost_lite", "--resume", "--out", tmp_path / "run"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "holds no last.pt to resume" in err


def test_config_resolution_layers_recipe_then_command_line():
    config, given = resolve_config(train.parse_args(
        ["--arch", "effb4_1d", "--lr", "3e-4", "--set", "loss.js1d=0.1", "--set", "aug.rotate.max_deg=90",
         "--set", "milestones=[0.5, 0.9]"]))
    assert config["lr"] == 3e-4 and config["epochs"] == 145 and config["batch_size"] == 32  # recipe kept
    assert config["loss"] == {"coord_mse": 1.0, "js1d": 0.1}
    assert config["aug"] == {"rotate": {"max_deg": 90}} and config["milestones"] == [0.5, 0.9]
    assert {"lr", "loss", "aug", "milestones"} <= given


def test_list_archs_prints_every_arch_with_params_size_paper(capsys):
    code, out, err = run_main(train.main, ["--list-archs"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    import models
    for name in models.list_models():
        row = next(line for line in lines if line.startswith(name + " "))
        assert "M" in row and models.model_entry(name).paper in row
    assert any(line.startswith("effb4_1d") and " 224 " in line for line in lines)


# --- real runs ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_short_run_writes_the_run_folder(synthetic_96, tmp_path):
    """A run on fold 1 of 4: the run folder, the constant-shape yardstick in every record, TensorBoard events,
    out-of-fold validation predictions of exactly that fold, and a row in the runs table."""
    folder = tmp_path / "run"
    result = run_train(*TINY, "--data-root", synthetic_96, "--epochs", "2", "--folds", "4", "--fold", "1",
                       "--out", folder)
    assert result.returncode == 0, result.stderr
    for name in ("config.json", "log.csv", "curves.png", "last.pt", "best.pt", "val_pred.npz", "summary.json"):
        assert (folder / name).is_file(), name
    assert list(folder.glob("events.out.tfevents.*"))
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["arch"] == "ghost_lite" and summary["epochs"] == 2 and summary["train_images_per_s"] > 0
    assert summary["best_val_pa_mpjpe_mm"] > 0 and summary["params"] < 1_000_000
    assert summary["best_val_fraction_of_constant_shape"] == pytest.approx(
        summary["best_val_pa_mpjpe_mm"] / summary["val_constant_shape_mm"])
    assert "of the constant-shape baseline" in result.stdout.splitlines()[-1]
    assert log_epochs(folder) == [1, 2]
    fold_ids = load_split(synthetic_96, "val", 4, 1).image_ids
    assert sorted(np.load(folder / "val_pred.npz")["ids"]) == sorted(fold_ids) and len(fold_ids) == 10
    table = runlog.list_runs(tmp_path)
    assert list(table["run"]) == ["run"]
    assert table["best_val_fraction_of_constant_shape"][0] == pytest.approx(
        summary["best_val_fraction_of_constant_shape"], abs=1e-3)
    config = json.loads((folder / "config.json").read_text())
    assert config["img_size"] == 64 and config["data_root"] == str(synthetic_96)
    state = load_checkpoint(folder / "best.pt")
    model = build_model(state, expect_arch="ghost_lite")
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 21, 3)


# --- stopping inside an epoch: SIGKILL, SIGTERM, Ctrl-C, timed saves ------------------------------------------------

SHORT = [*TINY, "--epochs", "2"]  # 38 training images in batches of 4: 9 batches an epoch (8 with accumulate=2)


@pytest.fixture(scope="module")
def straight_runs(synthetic_96, tmp_path_factory):
    """run(extra args) -> the folder of an uninterrupted SHORT run with them (made once per extra args)."""
    made = {}

    def run(extra):
        key = tuple(extra)
        if key not in made:
            made[key] = tmp_path_factory.mktemp("straight") / "run"
            train.main([str(a) for a in [*SHORT, *extra, "--data-root", synthetic_96, "--out", made[key]]])
        return made[key]
    return run


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(synthetic_96, straight_runs, tmp_path):
    """Killed inside epoch 2 and resumed by the original command line with --resume appended, with EMA, gradient
    accumulation, warm-up + cosine per step, top-k averaging and the final-epochs augmentation switch on: every
    epoch in log.csv once, and the same weights, EMA and schedule as a run never killed."""
    folder = tmp_path / "killed"
    args = [*SHORT, *FEATURES, "--data-root", synthetic_96]
    process = subprocess.Popen([sys.executable, "train.py", *map(str, args), "--out", str(folder)],
                               cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not (folder / "last.pt").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(0.1)  # into epoch 2 (its 4 steps and validation take longer)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = load_checkpoint(folder / "last.pt")["epoch"]
    assert killed_at == 1, "the run ended before it could be killed; make it longer"
    load_checkpoint(folder / "best.pt")  # loadable at any moment
    result = run_train(*args, "--out", folder, "--resume")
    assert result.returncode == 0, result.stderr
    assert f"resuming {folder} after epoch 1" in result.stdout
    assert log_epochs(folder) == [1, 2]
    assert load_checkpoint(folder / "last.pt")["epoch"] == 2
    straight = straight_runs(FEATURES)
    assert_same_run(straight, folder)
    summaries = [json.loads((f / "summary.json").read_text()) for f in (straight, folder)]
    assert summaries[0]["top_k_average"] == summaries[1]["top_k_average"] is not None
    assert summaries[0]["best_epoch"] == summaries[1]["best_epoch"] is not None


@pytest.mark.slow
@pytest.mark.parametrize("signum, extra, call, place", [
    (signal.SIGTERM, FEATURES, 8 + 3, "step 2 of 4 of epoch 2"),   # the 3rd batch of epoch 2: its step ends 1 later
    (signal.SIGTERM, [], 9 + 3, "step 3 of 9 of epoch 2"),
    (signal.SIGINT, [], 3, "step 3 of 9 of epoch 1"),             # Ctrl-C in the first epoch keeps its steps
], ids=["sigterm_ema_accumulate", "sigterm_plain", "ctrl_c_in_epoch_1"])
def test_signal_mid_step_stops_after_it_and_resume_matches_an_uninterrupted_run(
        signum, extra, call, place, synthetic_96, straight_runs, tmp_path, monkeypatch, capsys,
        terminal_stop_signals):
    """The signal arrives in the middle of a step: the step (all its accumulated batches) finishes, last.pt holds
    that place in the epoch, one line says so with the command that continues, exit 143 or 130; the original
    command with --resume then ends with the weights, EMA, schedule and log of a run never stopped."""
    folder, args = tmp_path / "run", [*SHORT, *extra, "--data-root", synthetic_96]
    act_at_forward(monkeypatch, call, lambda: os.kill(os.getpid(), signum))
    code, _, err = run_main(train.main, [*args, "--out", folder], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    name = "SIGTERM" if signum == signal.SIGTERM else "SIGINT (Ctrl-C)"
    assert code == 128 + signum and len(lines) == 1, err
    assert lines[0].startswith(f"interrupted: stopped by {name}; {folder / 'last.pt'} holds {place} of 2 ("), lines[0]
    assert lines[0].endswith(f"continue with: python train.py --out {folder} --resume")
    state = load_checkpoint(folder / "last.pt")
    assert state["epoch"] == state["position"]["epoch"] - 1 and state["position"]["world_size"] == 1
    monkeypatch.undo()
    code, out, err = run_main(train.main, [*args, "--out", folder, "--resume"], capsys)
    assert code == 0, err
    assert f"resuming {folder} after epoch {state['epoch']} of 2, at {place}" in out
    assert log_epochs(folder) == [1, 2]
    assert_same_run(straight_runs(extra), folder)


def test_a_signal_during_validation_stops_at_that_epoch_s_end_and_resume_trains_the_next(
        synthetic_96, tmp_path, monkeypatch, capsys, terminal_stop_signals):
    """SIGTERM while epoch 1 validates: last.pt holds epoch 1 (validated, saved), the line says so, and --resume
    trains epoch 2 alone."""
    from training.trainer import Trainer
    folder, args = tmp_path / "run", [*SHORT, "--data-root", synthetic_96]
    validate = Trainer.validate

    def signalled(self, model):
        os.kill(os.getpid(), signal.SIGTERM)
        return validate(self, model)
    monkeypatch.setattr(Trainer, "validate", signalled)
    code, _, err = run_main(train.main, [*args, "--out", folder], capsys)
    assert code == 143 and f"stopped by SIGTERM; {folder / 'last.pt'} holds epoch 1 of 2;" in err, err
    assert load_checkpoint(folder / "last.pt")["epoch"] == 1 and log_epochs(folder) == [1]
    monkeypatch.undo()
    code, out, err = run_main(train.main, [*args, "--out", folder, "--resume"], capsys)
    assert code == 0 and f"resuming {folder} after epoch 1 of 2" in out, err
    assert log_epochs(folder) == [1, 2]


@pytest.mark.slow
def test_checkpoint_minutes_saves_inside_the_epoch_and_a_crash_resumes_exactly(synthetic_96, straight_runs,
                                                                                tmp_path, monkeypatch, capsys):
    """checkpoint_minutes: last.pt is written inside the epoch when that much time has passed (here after every
    step); a crash between two such writes loses only the steps since the last one, and the resumed run ends as
    one never stopped (which wrote no such states)."""
    folder = tmp_path / "run"
    args = [*SHORT, *FEATURES, "--data-root", synthetic_96, "--set", "checkpoint_minutes=1e-9"]

    def crash():
        raise MemoryError("a crash that kills the process")
    act_at_forward(monkeypatch, 8 + 5, crash)  # epoch 2's 5th batch: 2 of its steps were saved
    with pytest.raises(MemoryError):
        train.main([str(a) for a in [*args, "--out", folder]])
    state = load_checkpoint(folder / "last.pt")
    assert (state["epoch"], state["position"]["epoch"], state["position"]["batches"]) == (1, 2, 4)
    monkeypatch.undo()
    code, out, err = run_main(train.main, [*args, "--out", folder, "--resume"], capsys)
    assert code == 0, err
    assert "after epoch 1 of 2, at step 2 of 4 of epoch 2" in out
    assert_same_run(straight_runs(FEATURES), folder)


@pytest.mark.parametrize("saved, running, command", [
    (2, None, "torchrun --nproc_per_node 2 train.py --out {folder} --resume"),
    (1, "2", "python train.py --out {folder} --resume"),
], ids=["ddp_state_resumed_by_python", "single_state_resumed_by_torchrun"])
def test_a_state_inside_an_epoch_resumes_over_as_many_processes_and_says_the_command(saved, running, command,
                                                                                      tmp_path, monkeypatch, capsys):
    """A last.pt written inside an epoch of a run of ``saved`` processes, resumed over another number: one line
    giving the command that resumes it, runnable as written (torchrun for a DDP run)."""
    folder = tmp_path / "run"
    folder.mkdir()
    save_checkpoint({"config": recipes.recipe_config("ghost_lite"), "model": {}, "epoch": 0,
                     "position": {"epoch": 1, "world_size": saved}}, folder / "last.pt")
    if running:
        monkeypatch.setenv("WORLD_SIZE", running)
    with pytest.raises(UserError) as info:
        resume_config(train.parse_args(["--out", str(folder), "--resume"]), folder)
    assert str(info.value).endswith(f"resume it with {saved}: {command.format(folder=folder)}"), str(info.value)


def test_an_older_run_s_yardstick_keys_read_under_the_current_names(tmp_path):
    """log.csv columns and last.pt history rows of older runs go through runlog.RENAMED_KEYS."""
    old_row = {"epoch": 1, "val_pa_mpjpe_mm": 20.0, "val_of_constant": 0.8, "val_constant_shape_mm": 25.0,
               "train_images_per_s": 100.0}
    config = recipes.recipe_config("ghost_lite")
    progress = restored_progress({"epoch": 1, "best_val_pa_mpjpe_mm": 20.0, "history": [old_row], "config": config},
                                 config, steps_per_epoch=1, folder=tmp_path)
    assert progress.history[0]["val_fraction_of_constant_shape"] == 0.8 and "val_of_constant" not in progress.history[0]
    folder = tmp_path / "old_run"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    with open(folder / "log.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(old_row))
        writer.writeheader()
        writer.writerow(old_row)
    table = runlog.list_runs(tmp_path)
    assert table["best_val_fraction_of_constant_shape"][0] == pytest.approx(0.8)


def test_the_command_that_continues_names_torchrun_for_a_ddp_run():
    assert continue_command("runs/a", 1) == "python train.py --out runs/a --resume"
    assert continue_command("runs/a", 4, 4) == "torchrun --nproc_per_node 4 train.py --out runs/a --resume"
    assert continue_command("runs/a", 8, 4).startswith("torchrun --nnodes 2 --nproc_per_node 4 ")


def test_resume_of_a_run_from_an_older_train_py_is_one_line(tmp_path, capsys):
    folder = tmp_path / "old"
    folder.mkdir()
    config = {k: v for k, v in recipes.CONFIG_DEFAULTS.items() if k not in ("ema_decay", "accumulate")}
    save_checkpoint({"config": config, "model": {}, "epoch": 1}, folder / "last.pt")
    code, _, err = run_main(train.main, ["--resume", "--out", folder], capsys)
    assert code == 2 and err.count("\n") == 1 and "older train.py" in err and "accumulate, ema_decay" in err


# --- --resume with the original command line --------------------------------------------------------------------

@pytest.fixture(scope="module")
def one_epoch_run(synthetic_96, tmp_path_factory):
    folder = tmp_path_factory.mktemp("one_epoch") / "run"
    original = [str(a) for a in [*TINY, "--data-root", synthetic_96, "--epochs", "1", "--augs", "rotate",
                                 "--out", folder]]
    train.main(original)
    return folder, original


@pytest.mark.parametrize("change, key, value", [
    ([], "epochs", 1),
    (["--data-root", "{root}/../{root_name}"], "data_root", "{root}"),   # the same folder, spelt otherwise
    (["--augs", "Rotate"], "augs", "rotate"),
    (["--pretrained", "auto"], "pretrained", "none"),
    (["--device", "auto"], "device", "auto"),
    (["--workers", "1"], "workers", 1),
    (["--lr", "5e-4"], "lr", 5e-4),
    (["--set", "grad_clip=1"], "grad_clip", 1.0),
    (["--set", "checkpoint_minutes=5"], "checkpoint_minutes", 5.0),
    (["--set", "cache=true"], "cache", True),
], ids=["original", "same_data_root", "same_augs", "pretrained_auto", "device", "workers", "lr", "grad_clip",
        "checkpoint_minutes", "cache"])
def test_resume_accepts_the_original_command_line_and_the_safe_changes(one_epoch_run, synthetic_96, change, key,
                                                                        value):
    """The original command with --resume appended: equal values are no change (as resolved: paths, augmentation
    lists, auto); device, workers, lr, grad_clip, checkpoint_minutes and cache may change."""
    folder, original = one_epoch_run
    fill = {"root": str(synthetic_96), "root_name": synthetic_96.name}
    argv = [*original, "--resume", *(item.format(**fill) for item in change)]
    _, config = resume_config(train.parse_args(argv), folder)
    assert config[key] == (value.format(**fill) if isinstance(value, str) else value)


@pytest.mark.parametrize("change, shown", [
    (["--epochs", "3"], "--epochs was 1, given 3"),
    (["--img-size", "96"], "--img-size was 64, given 96"),
    (["--set", "loss.uv_l1=2"], "--set loss.uv_l1 was 1.0, given 2"),
    (["--set", "loss.js1d=0.1"], '--set loss.js1d was "(not set)", given 0.1'),
    (["--augs", "rotate,flip"], '--augs was "rotate", given "rotate,flip"'),
    (["--recipe", "resnet34"], '--recipe was "ghost_lite", given "resnet34"'),
], ids=["epochs", "img_size", "loss_weight", "new_loss_term", "augs", "recipe"])
def test_resume_refuses_a_real_change_naming_the_key_and_both_values(one_epoch_run, change, shown, capsys):
    folder, original = one_epoch_run
    before = load_checkpoint(folder / "last.pt")["epoch"]
    code, _, err = run_main(train.main, [*original, "--resume", *change], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert shown in err and "start a new run with another --out" in err
    assert load_checkpoint(folder / "last.pt")["epoch"] == before


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(synthetic_96, tmp_path, monkeypatch):
    folder = tmp_path / "run"
    real_loss, calls = step.pose_loss, {"n": 0}
    steps_per_epoch = 38 // 4  # 40 hands, 2 held out for validation, batch 4

    def loss_turning_nan(*args, **kwargs):
        total, parts = real_loss(*args, **kwargs)
        calls["n"] += 1
        return (total * float("nan") if calls["n"] > steps_per_epoch + 2 else total), parts

    monkeypatch.setattr(step, "pose_loss", loss_turning_nan)
    with pytest.raises(SystemExit) as exit_info:
        train.main([*TINY, "--data-root", str(synthetic_96), "--epochs", "3", "--out", str(folder)])
    assert exit_info.value.code == 2
    assert load_checkpoint(folder / "last.pt")["epoch"] == 1
    assert log_epochs(folder) == [1]


def torchrun(*args, script="train.py", port=29533, wait=True):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
               str(script), *map(str, args)]
    run = subprocess.run if wait else subprocess.Popen
    kwargs = {"timeout": 300} if wait else {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    return run(command, cwd=PROJECT_ROOT, **({"capture_output": True} if wait else {}), text=True,
               env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=stop_signals_as_in_a_terminal, **kwargs)


@pytest.fixture(scope="module")
def ddp_run(synthetic_96, tmp_path_factory):
    """(arguments, folder) of an uninterrupted 2-process run with every training feature on."""
    folder = tmp_path_factory.mktemp("ddp") / "ddp"
    args = [*TINY, *FEATURES, "--data-root", synthetic_96, "--epochs", "2"]
    result = torchrun(*args, "--out", folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return args, folder


@pytest.mark.slow
def test_ddp_two_processes_on_cpu_keep_the_same_weights(ddp_run):
    _, folder = ddp_run
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_hold_same_weights"] is True
    assert summary["ranks_hold_same_ema"] is True
    assert log_epochs(folder) == [1, 2]


STOPPING_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {root!r})
import train
from training import trainer
real, calls = trainer.forward_loss, [0]
def forward(*args, **kwargs):
    calls[0] += 1
    if calls[0] == {call} and os.environ.get("RANK") == "1":
        os.kill(os.getppid(), signal.SIGTERM)  # to torchrun, which passes it on to every process, as a scheduler
    return real(*args, **kwargs)
trainer.forward_loss = forward
try:
    train.main()
except SystemExit as end:  # the exit status of each rank, for the test
    with open(os.path.join({folder!r}, "..", f"exit_{{os.environ['RANK']}}"), "w") as f:
        f.write(str(end.code))
    raise
"""


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_every_rank_at_one_step_and_resume_matches(ddp_run, tmp_path):
    """SIGTERM to torchrun mid-step (sent from rank 1's 1st batch of epoch 2; each rank has 4 batches = 2 steps an
    epoch): every rank stops after the same step, rank 0 writes last.pt and prints the one line, each exits 143;
    the original command with --resume under torchrun ends with the weights of the uninterrupted run."""
    args, straight = ddp_run
    folder, script = tmp_path / "ddp", tmp_path / "stop.py"
    script.write_text(STOPPING_SCRIPT.format(root=str(PROJECT_ROOT), call=4 + 1, folder=str(folder)))
    stopped = torchrun(*args, "--out", folder, script=script, port=29535)
    assert stopped.returncode != 0  # torchrun itself reports the signal it got
    assert [(tmp_path / f"exit_{rank}").read_text() for rank in (0, 1)] == ["143", "143"]
    lines = [line for line in stopped.stderr.splitlines() if line.startswith("interrupted:")]
    assert lines == [f"interrupted: stopped by SIGTERM; {folder / 'last.pt'} holds step 1 of 2 of epoch 2 of 2 "
                     f"(weights, EMA, optimiser, schedule, scaler, random streams and the place in the epoch's order); "
                     f"continue with: torchrun --nproc_per_node 2 train.py --out {folder} --resume"], \
        stopped.stderr[-3000:]
    position = load_checkpoint(folder / "last.pt")["position"]
    assert (position["world_size"], position["batches"], len(position["streams"])) == (2, 2, 2)
    resumed = torchrun("--out", folder, "--resume", port=29537)  # the command the line gives
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "after epoch 1 of 2, at step 1 of 2 of epoch 2" in resumed.stdout
    assert_same_run(straight, folder)
    assert json.loads((folder / "summary.json").read_text())["ranks_hold_same_weights"] is True
