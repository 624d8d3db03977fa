"""Every failure is one clear line, a non-zero exit, and loses nothing: bad output places, bad values, broken
annotation and project files, advice that works as written, run-folder locks, Ctrl-C, stale temp files, late
errors, and elastic restarts under torchrun. One test per case, named after it."""
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import augment
import bench
from core import common
from training import step
from prediction import inference
import predict
import train
from models.checkpoints import load_checkpoint
from core.common import PROJECT_ROOT, UserError
from data.readers import load_split
from tests.scripts import TINY, log_epochs, run_main, stop_signals_as_in_a_terminal

FAST = [*TINY, "--epochs", "2", "--set", "max_train_images=12", "--set", "max_val_images=4"]


@pytest.fixture(scope="module")
def finished_run(synthetic_64, tmp_path_factory):
    folder = tmp_path_factory.mktemp("finished") / "run"
    train.main([str(a) for a in [*FAST, "--data-root", synthetic_64, "--out", folder]])
    return folder


PROGRESS_BAR = re.compile(r"\d+/\d+ \[|it/s|s/it")  # tqdm's redrawn lines


def one_line_error(code, err, *fragments, exit_code=2):
    """The message is one line on stderr (progress bars aside), with no traceback."""
    lines = [line for line in re.split(r"[\r\n]", err) if line.strip() and not PROGRESS_BAR.search(line)]
    assert code == exit_code and len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# --- 1. output places that cannot be written -----------------------------------------------------------------

@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


@pytest.mark.parametrize("below", [False, True], ids=["out_is_a_file", "out_below_a_file"])
def test_train_out_that_is_a_file_or_below_one(a_file, below, synthetic_64, capsys):
    out = a_file / "run" if below else a_file
    code, _, err = run_main(train.main, [*FAST, "--data-root", synthetic_64, "--out", out], capsys)
    one_line_error(code, err, str(a_file))
    assert a_file.read_text() == "not a folder"


def test_predict_out_below_a_file(finished_run, a_file, capsys):
    code, _, err = run_main(predict.main, ["--ckpt", finished_run / "best.pt", "--split", "val",
                                           "--out", a_file / "sub" / "x"], capsys)
    one_line_error(code, err, str(a_file))


def test_augment_preview_out_below_a_file(a_file, capsys):
    code, _, err = run_main(augment.main, ["--preview", "--out", a_file / "x"], capsys)
    one_line_error(code, err, str(a_file))


def test_bench_out_below_a_file_fails_before_measuring(a_file, capsys):
    code, out, err = run_main(bench.main, ["--out", a_file / "b.json", "--archs", "none"], capsys)
    one_line_error(code, err, str(a_file))
    assert "images/s" not in out  # nothing was measured and lost


def test_read_only_or_full_output_folder_is_one_line(tmp_path, monkeypatch):
    """The writability probe: a read-only file system or a full disk is a UserError naming the folder."""
    for code in (errno.EROFS, errno.ENOSPC):
        def refuse(*args, code=code, **kwargs):
            raise OSError(code, os.strerror(code))
        monkeypatch.setattr(common, "open", refuse, raising=False)
        with pytest.raises(UserError, match=str(tmp_path)):
            common.ensure_writable_folder(tmp_path, "run folder")
    monkeypatch.undo()
    assert not list(tmp_path.iterdir())  # no probe left behind


def test_full_disk_mid_write_leaves_no_temp_file_and_the_old_file(tmp_path):
    target = tmp_path / "last.pt"
    target.write_text("the previous epoch")
    with pytest.raises(OSError, match="No space"):
        with common.atomic_write(target) as tmp:
            tmp.write_text("half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert target.read_text() == "the previous epoch"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_cleanup_error_never_hides_the_first_error(tmp_path, monkeypatch):
    def unlink_fails(self, missing_ok=False):
        raise PermissionError("cannot remove")
    monkeypatch.setattr(Path, "unlink", unlink_fails)
    with pytest.raises(OSError, match="No space"):
        with common.atomic_write(tmp_path / "x.json") as tmp:
            tmp.write_text("half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_os_error_at_the_boundary_is_one_line(capsys):
    @common.cli
    def main():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/some/run/last.pt")
    code, _, err = run_main(lambda argv: main(), [], capsys)
    one_line_error(code, err, "/some/run/last.pt", "No space left on device")


# --- 2. values reaching a library unchecked ---------------------------------------------------------------------

@pytest.mark.parametrize("args, fragment", [
    (["--set", "loss.uv_l1=abc"], "uv_l1='abc'"),
    (["--set", "loss.uv_l1=-1"], "uv_l1=-1"),
    (["--set", "model.bogus=1"], "bogus"),
    (["--lr", "nan"], "lr=nan"),
    (["--set", "grad_clip=-1"], "grad_clip=-1"),
    (["--set", "loss.asm_components=0"], "asm_components=0"),
    (["--folds", "3", "--fold", "3"], "--fold 3"),
], ids=["loss_weight_not_a_number", "negative_loss_weight", "unknown_model_option", "lr_nan", "negative_grad_clip",
        "asm_components_zero", "fold_out_of_range"])
def test_bad_training_value_fails_before_anything_is_written(args, fragment, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_main(train.main, [*FAST, "--out", out, *args], capsys)
    one_line_error(code, err, fragment)
    assert not out.exists()


@pytest.mark.parametrize("main, args, fragment", [
    (augment.main, ["--preview", "--img-size", "0", "--out", "X"], "--img-size 0"),
    (bench.main, ["--threads", "-1", "--archs", "none"], "--threads -1"),
    (bench.main, ["--max-images", "-1", "--archs", "none"], "--max-images -1"),
    (predict.main, ["--tta-range", "0"], "--tta-range 0"),
], ids=["augment_img_size_zero", "bench_threads_negative", "bench_max_images_negative",
        "predict_tta_range_zero"])
def test_bad_script_number_is_one_line(main, args, fragment, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(main, args, capsys)
    one_line_error(code, err, fragment)


# --- 3. a singular K --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prefix, split", [("training", "train"), ("evaluation", "evaluation")],
                         ids=["singular_K_in_training", "singular_K_in_evaluation"])
def test_singular_K_names_the_file_and_the_entry(synthetic_64, copy_of, tmp_path, prefix, split):
    root = copy_of(synthetic_64)
    K = json.loads((root / f"{prefix}_K.json").read_text())
    K[3] = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    (root / f"{prefix}_K.json").write_text(json.dumps(K))
    with pytest.raises(UserError, match=rf"{prefix}_K.json: entry 3 is not a camera matrix"):
        load_split(root, split)


# --- 4. corrupt files the project wrote itself -----------------------------------------------------------------

def test_corrupt_val_split_json_says_delete_it(synthetic_64, copy_of, tmp_path):
    root = copy_of(synthetic_64)
    (root / "val_split.json").write_text('{"num_annotations": 24, "val_ann')
    with pytest.raises(UserError, match="val_split.json is damaged.*delete it to make a new split"):
        load_split(root, "train")


def test_corrupt_config_json_when_resuming_by_arch_says_resume_by_out(finished_run, tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    broken = runs / "broken"
    subprocess.run(["cp", "-r", str(finished_run), str(broken)], check=True)
    (broken / "config.json").write_text("{not json")
    monkeypatch.setenv("HANDPOSE_RUNS", str(runs))
    code, _, err = run_main(train.main, ["--arch", "ghost_lite", "--resume"], capsys)
    one_line_error(code, err, "config.json cannot be read", f"--out {broken} --resume")


# --- 5. advice that works as written --------------------------------------------------------------------------

def test_nan_advice_command_is_accepted_by_resume(finished_run, tmp_path, capsys):
    """The NaN message's command (--resume with a lower --lr and clipping) runs; --ckpt is advised nowhere."""
    folder = tmp_path / "run"
    subprocess.run(["cp", "-r", str(finished_run), str(folder)], check=True)
    state = load_checkpoint(folder / "last.pt")
    state["config"]["epochs"] = 3
    from training.checkpoints import save_checkpoint
    save_checkpoint(state, folder / "last.pt")
    code, out, err = run_main(train.main, ["--out", folder, "--resume", "--lr", "3e-4", "--set", "grad_clip=1.0"],
                              capsys)
    assert code == 0, err
    last = load_checkpoint(folder / "last.pt")
    assert last["epoch"] == 3 and last["config"]["lr"] == 3e-4 and last["config"]["grad_clip"] == 1.0
    assert "--ckpt" not in out + err


def test_nan_in_the_first_epoch_advises_a_new_run_and_keeps_no_empty_folder(synthetic_64, tmp_path, monkeypatch,
                                                                             capsys):
    real_loss = step.pose_loss
    monkeypatch.setattr(step, "pose_loss", lambda *a, **k: (real_loss(*a, **k)[0] * float("nan"),
                                                             real_loss(*a, **k)[1]))
    out = tmp_path / "run"
    code, _, err = run_main(train.main, [*FAST, "--data-root", synthetic_64, "--out", out], capsys)
    line = one_line_error(code, err, "nothing was kept", "--lr", "grad_clip=1.0")
    assert "--resume" not in line and not out.exists()


def test_resume_without_last_pt_gives_the_command_that_works(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    code, _, err = run_main(train.main, ["--out", folder, "--resume"], capsys)
    one_line_error(code, err, "holds no last.pt", "without --resume")
    assert "--ckpt" not in err


# --- 6. one run per folder -------------------------------------------------------------------------------------

def test_new_run_into_a_folder_holding_a_run_is_refused(finished_run, synthetic_64, capsys):
    before = load_checkpoint(finished_run / "last.pt")["epoch"]
    code, _, err = run_main(train.main, [*FAST, "--data-root", synthetic_64, "--out", finished_run], capsys)
    one_line_error(code, err, "already holds a run", "--resume")
    assert load_checkpoint(finished_run / "last.pt")["epoch"] == before


def test_resume_with_another_arch_is_refused(finished_run, capsys):
    config = (finished_run / "config.json").read_text()
    code, _, err = run_main(train.main, ["--arch", "resnet34", "--resume", "--out", finished_run], capsys)
    one_line_error(code, err, "is a run of ghost_lite, not --arch resnet34")
    assert (finished_run / "config.json").read_text() == config


@pytest.mark.slow
def test_second_process_on_a_folder_in_use_is_refused(synthetic_64, tmp_path, capsys):
    folder = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "train.py", *FAST[:-4], "--epochs", "30", "--data-root",
                              str(synthetic_64), "--out", str(folder)], cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        while not (folder / "last.pt").exists() and time.time() < deadline:
            time.sleep(0.05)
        # e.g. a resume typed while the run still trains
        code, _, err = run_main(train.main, ["--out", folder, "--resume"], capsys)
        assert code == 2 and "in use by another training process" in err and err.count("\n") == 1, err
    finally:
        first.kill()
        first.wait()


# --- 7. Ctrl-C -------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_ctrl_c_is_one_line_with_the_command_to_continue_and_exit_130(synthetic_64, tmp_path):
    folder = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "train.py", *FAST[:-4], "--epochs", "30", "--data-root",
                                str(synthetic_64), "--out", str(folder)], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                               preexec_fn=stop_signals_as_in_a_terminal)
    deadline = time.time() + 120
    while not (folder / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    lines = [line for line in re.split(r"[\r\n]", err) if line.strip() and not PROGRESS_BAR.search(line)]
    assert process.returncode == 130, err
    assert lines[-1].startswith("interrupted: ") and "Traceback" not in err, err
    assert lines[-1].startswith(f"interrupted: stopped by SIGINT (Ctrl-C); {folder / 'last.pt'} holds "), lines[-1]
    assert lines[-1].endswith(f"; continue with: python train.py --out {folder} --resume")


def test_a_signal_the_process_was_started_ignoring_stays_ignored_in_the_epochs():
    """A background job of a script starts with SIGINT ignored (the script's Ctrl-C is not for it): the epochs'
    stop handler leaves it so, and still turns SIGTERM into a stop at the next step."""
    from training import runstate
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with runstate.StopSignals() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.received == 0 and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.received == signal.SIGTERM
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.slow
def test_sigterm_to_every_process_with_loader_workers_is_one_line_and_exit_143(synthetic_64, tmp_path):
    """A scheduler's SIGTERM reaches the training process and its loader workers at once (a process group): the
    workers keep serving until the step ends, last.pt is written, one line, exit 143, no worker left behind."""
    folder = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "train.py", *FAST[:-4], "--epochs", "30", "--workers", "2",
                                "--data-root", str(synthetic_64), "--out", str(folder)], cwd=PROJECT_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=stop_signals_as_in_a_terminal)
    deadline = time.time() + 120
    while not (folder / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    os.killpg(process.pid, signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    lines = [line for line in re.split(r"[\r\n]", err) if line.strip() and not PROGRESS_BAR.search(line)]
    assert process.returncode == 143 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"interrupted: stopped by SIGTERM; {folder / 'last.pt'} holds "), lines[0]
    assert not processes_naming(folder)  # forked loader workers keep their parent's command line
    load_checkpoint(folder / "last.pt")


def processes_naming(text):
    """Process ids whose command line contains ``text`` (from /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(text).encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:  # ended meanwhile
            continue
    return found


# --- 9. stale temp files and a kill between best.pt and last.pt ------------------------------------------------

def test_stale_temp_files_are_removed_when_the_run_resumes(finished_run, tmp_path, capsys):
    folder = tmp_path / "run"
    subprocess.run(["cp", "-r", str(finished_run), str(folder)], check=True)
    stale = folder / f".last.pt{common.TEMP_MARK}99999"
    stale.write_bytes(b"half a checkpoint")
    code, _, err = run_main(train.main, ["--out", folder, "--resume"], capsys)
    assert code == 0, err
    assert not stale.exists()


def test_kill_between_best_and_last_in_epoch_one_can_start_again(finished_run, synthetic_64, tmp_path, capsys):
    """A run killed after best.pt but before its first last.pt: --resume says to start again, and the same
    command without --resume does so."""
    folder = tmp_path / "run"
    subprocess.run(["cp", "-r", str(finished_run), str(folder)], check=True)
    (folder / "last.pt").unlink()
    code, _, err = run_main(train.main, ["--out", folder, "--resume"], capsys)
    assert code == 2 and "holds no last.pt" in err
    code, _, err = run_main(train.main, [*FAST, "--data-root", synthetic_64, "--out", folder], capsys)
    assert code == 0, err
    assert log_epochs(folder) == [1, 2]


# --- 10. late errors leave no half-made run folder -------------------------------------------------------------

def test_corrupt_image_found_in_epoch_one_leaves_no_run_folder(synthetic_64, copy_of, tmp_path, capsys):
    root = copy_of(synthetic_64)
    for image in sorted((root / "training" / "rgb").glob("*.jpg")):
        image.write_bytes(b"not a jpeg")
    out = tmp_path / "run"
    code, _, err = run_main(train.main, [*FAST, "--data-root", root, "--out", out], capsys)
    one_line_error(code, err, "cannot decode image")
    assert not out.exists()


# --- 8. any --tta at bounded memory -----------------------------------------------------------------------------

def test_tta_1000_runs_in_chunks(monkeypatch):
    """--tta 1000 runs the rotations a few at a time (the chunk test in test_predict checks the average)."""
    import torch
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            seen.append(x.shape[0])
            return torch.zeros(x.shape[0], 21, 3)

    inference.predict_batch(Probe(), torch.zeros(10, 3, 16, 16, dtype=torch.uint8), tta=1000)
    assert max(seen) <= inference.TTA_IMAGES_PER_FORWARD and sum(seen) == 10 * 1000


# --- elastic training -------------------------------------------------------------------------------------------

def training_workers_of(pid):
    """Process ids of the train.py workers whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if parent == pid and b"train.py" in command:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
def test_elastic_restart_continues_from_last_pt(synthetic_64, tmp_path):
    """torchrun --max-restarts 1: a worker killed after epoch 1 makes the group restart, and the restarted
    workers continue the run from its last.pt (no manual --resume): every epoch once, equal weights on both ranks."""
    folder = tmp_path / "elastic"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--max-restarts", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:29541", "--rdzv-id", "elastic-test",
               "train.py", *TINY, "--epochs", "4", "--data-root", str(synthetic_64), "--out", str(folder)]
    torchrun = subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 180
    while not (folder / "last.pt").exists() and time.time() < deadline and torchrun.poll() is None:
        time.sleep(0.05)
    workers = training_workers_of(torchrun.pid)
    assert len(workers) == 2, workers
    os.kill(workers[-1], signal.SIGKILL)
    out, err = torchrun.communicate(timeout=300)
    assert torchrun.returncode == 0, err[-3000:]
    assert "resuming" in out
    assert log_epochs(folder) == [1, 2, 3, 4]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_hold_same_weights"] is True


@pytest.mark.slow
def test_two_node_rendezvous_on_localhost_trains_with_equal_weights(synthetic_64, tmp_path):
    folder = tmp_path / "two_nodes"
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node",
                               "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:29547", "--rdzv-id",
                               "two-nodes", "train.py", *FAST, "--data-root", str(synthetic_64), "--out", str(folder)],
                              cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}) for _ in range(2)]
    results = [node.communicate(timeout=300) for node in nodes]
    assert all(node.returncode == 0 for node in nodes), [err[-2000:] for _, err in results]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_hold_same_weights"] is True
    assert np.isfinite(summary["best_val_pa_mpjpe_mm"])
