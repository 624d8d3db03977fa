"""train.py: configuration errors, a real short run, exact resume after SIGKILL, NaN stop, DDP."""
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

import engine
import recipes
import runlog
import train
from checkpoints import build_model, load_checkpoint, save_checkpoint
from common import PROJECT_ROOT
from data.readers import load_split
from tests.scripts import make_synthetic_set, run_main

TINY = ["--arch", "ghost_lite", "--img-size", "64", "--batch-size", "4", "--pretrained", "none", "--workers", "0",
        "--device", "cpu", "--set", "cache=false"]
# every training feature whose state must survive a resume and stay equal across DDP ranks
FEATURES = ["--set", "ema_decay=0.9", "--set", "accumulate=2", "--set", "schedule=cosine", "--set", "warmup_epochs=1",
            "--set", "min_lr_ratio=0.1", "--set", "optimizer=adamw", "--set", "weight_decay=0.01",
            "--set", "average_top_k=2", "--set", "final_epochs=1", "--set", "augs_final=none"]


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    return make_synthetic_set(tmp_path_factory.mktemp("synthetic") / "data", 40, 8, seed=3, size=96)


def run_train(*args, env=None, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "train.py", *map(str, args)], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, env=env, **kwargs)


def log_epochs(folder):
    with open(folder / "log.csv") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


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
    config, given = train.resolve_config(train.parse_args(
        ["--arch", "effb4_1d", "--lr", "3e-4", "--set", "loss.js1d=0.1", "--set", "aug.rotate.max_deg=90",
         "--set", "milestones=[0.5, 0.9]"]))
    assert config["lr"] == 3e-4 and config["epochs"] == 145 and config["batch_size"] == 32  # recipe kept
    assert config["loss"] == {"coord_mse": 1.0, "js1d": 0.1}
    assert config["aug"] == {"rotate": {"max_deg": 90}} and config["milestones"] == [0.5, 0.9]
    assert {"lr", "loss", "aug", "milestones"} <= given


def test_list_archs_prints_every_arch_with_params_size_seed(capsys):
    code, out, err = run_main(train.main, ["--list-archs"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    import models
    for name in models.list_models():
        row = next(line for line in lines if line.startswith(name + " "))
        assert "M" in row and models.model_entry(name).seed in row
    assert any(line.startswith("effb4_1d") and " 224 " in line for line in lines)


# --- real runs ----------------------------------------------------------------------------------------------

def test_a_short_run_writes_the_run_folder(synthetic_root, tmp_path):
    """A run on fold 1 of 4: the run folder, the constant-shape yardstick in every record, TensorBoard events,
    out-of-fold validation predictions of exactly that fold, and a row in the runs table."""
    folder = tmp_path / "run"
    result = run_train(*TINY, "--data-root", synthetic_root, "--epochs", "2", "--folds", "4", "--fold", "1",
                       "--out", folder)
    assert result.returncode == 0, result.stderr
    for name in ("config.json", "log.csv", "curves.png", "last.pt", "best.pt", "val_pred.npz", "summary.json"):
        assert (folder / name).is_file(), name
    assert list(folder.glob("events.out.tfevents.*"))
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["arch"] == "ghost_lite" and summary["epochs"] == 2 and summary["train_images_per_s"] > 0
    assert summary["best_val_pa_mpjpe_mm"] > 0 and summary["params"] < 1_000_000
    assert summary["best_val_fraction_of_constant_shape"] == pytest.approx(
        summary["best_val_pa_mpjpe_mm"] / summary["val_constant_shape_pa_mpjpe_mm"])
    assert "of the constant-shape baseline" in result.stdout.splitlines()[-1]
    assert log_epochs(folder) == [1, 2]
    fold_ids = load_split(synthetic_root, "val", 4, 1).image_ids
    assert sorted(np.load(folder / "val_pred.npz")["ids"]) == sorted(fold_ids) and len(fold_ids) == 10
    table = runlog.list_runs(tmp_path)
    assert list(table["run"]) == ["run"] and table["of_constant"][0] == pytest.approx(
        summary["best_val_fraction_of_constant_shape"], abs=1e-3)
    config = json.loads((folder / "config.json").read_text())
    assert config["img_size"] == 64 and config["data_root"] == str(synthetic_root)
    state = load_checkpoint(folder / "best.pt")
    model = build_model(state, expect_arch="ghost_lite")
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 21, 3)


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(synthetic_root, tmp_path):
    """Killed mid-epoch and resumed, with EMA, gradient accumulation, warm-up + cosine per step, top-k averaging
    and the final-epochs augmentation switch on: every epoch in log.csv once, and the same weights, EMA and
    schedule as a run never killed."""
    folder, straight = tmp_path / "killed", tmp_path / "straight"
    args = [*TINY, *FEATURES, "--data-root", synthetic_root, "--epochs", "4"]
    process = subprocess.Popen([sys.executable, "train.py", *map(str, args), "--out", str(folder)],
                               cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while not (folder / "last.pt").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # into the next epoch
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = load_checkpoint(folder / "last.pt")["epoch"]
    assert killed_at < 4, "the run ended before it could be killed; make it longer"
    load_checkpoint(folder / "best.pt")  # loadable at any moment
    result = run_train("--resume", "--out", folder)
    assert result.returncode == 0, result.stderr
    assert f"resuming {folder} after epoch {killed_at}" in result.stdout
    assert log_epochs(folder) == [1, 2, 3, 4]
    assert load_checkpoint(folder / "last.pt")["epoch"] == 4

    assert run_train(*args, "--out", straight).returncode == 0
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(folder / "last.pt")
    for weights in ("model", "ema"):
        for key in a[weights]:
            torch.testing.assert_close(a[weights][key], b[weights][key], rtol=0, atol=1e-6, msg=f"{weights} {key}")
    assert a["scheduler"] == b["scheduler"]
    assert [row["lr"] for row in a["history"]] == [row["lr"] for row in b["history"]]
    summaries = [json.loads((f / "summary.json").read_text()) for f in (straight, folder)]
    assert summaries[0]["top_k_average"] == summaries[1]["top_k_average"] is not None


def test_resume_of_a_run_from_an_older_train_py_is_one_line(tmp_path, capsys):
    folder = tmp_path / "old"
    folder.mkdir()
    config = {k: v for k, v in recipes.DEFAULTS.items() if k not in ("ema_decay", "accumulate")}
    save_checkpoint({"config": config, "model": {}, "epoch": 1}, folder / "last.pt")
    code, _, err = run_main(train.main, ["--resume", "--out", folder], capsys)
    assert code == 2 and err.count("\n") == 1 and "older train.py" in err and "accumulate, ema_decay" in err


def test_resume_keeps_the_saved_schedule(synthetic_root, tmp_path, capsys):
    folder = tmp_path / "run"
    assert run_train(*TINY, "--data-root", synthetic_root, "--epochs", "1", "--out", folder).returncode == 0
    code, _, err = run_main(train.main, ["--resume", "--out", folder, "--epochs", "3"], capsys)
    assert code == 2 and "--epochs" in err and err.count("\n") == 1


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(synthetic_root, tmp_path, monkeypatch):
    folder = tmp_path / "run"
    real_loss, calls = engine.pose_loss, {"n": 0}
    steps_per_epoch = 38 // 4  # 40 hands, 2 held out for validation, batch 4

    def loss_turning_nan(*args, **kwargs):
        total, parts = real_loss(*args, **kwargs)
        calls["n"] += 1
        return (total * float("nan") if calls["n"] > steps_per_epoch + 2 else total), parts

    monkeypatch.setattr(engine, "pose_loss", loss_turning_nan)
    with pytest.raises(SystemExit) as exit_info:
        train.main([*TINY, "--data-root", str(synthetic_root), "--epochs", "3", "--out", str(folder)])
    assert exit_info.value.code == 2
    assert load_checkpoint(folder / "last.pt")["epoch"] == 1
    assert log_epochs(folder) == [1]


def test_ddp_two_processes_on_cpu_keep_the_same_weights(synthetic_root, tmp_path):
    folder = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
               "train.py", *TINY, *FEATURES, "--data-root", str(synthetic_root), "--epochs", "2", "--out", str(folder)]
    result = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_hold_same_weights"] is True
    assert summary["ranks_hold_same_ema"] is True
    assert log_epochs(folder) == [1, 2]
