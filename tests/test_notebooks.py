"""docs/notebooks.md: every bash block on the page runs as written, with its fixed places (/kaggle/..., /datasets,
$HOME, $TMPDIR) mapped into a temporary folder, a tiny read-only dataset, and the CPU standing in for the GPUs
(training and prediction get small sizes and --device cpu appended; torchrun runs its two processes on the CPU).
The Kaggle session's end and the SLURM preemption are a real SIGTERM once the run holds a last.pt; the next
session and the requeued job run the page's commands again and finish the run."""
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest
import torch

import models
from core.common import PROJECT_ROOT

PAGE = PROJECT_ROOT / "docs" / "notebooks.md"
CPU_TRAIN = " --epochs 2 --img-size 64 --batch-size 4 --device cpu --workers 0"
CPU_PREDICT = " --device cpu --workers 0 --batch-size 4"


def blocks():
    """The page's ```bash blocks, in order."""
    return re.findall(r"```bash\n(.*?)```", PAGE.read_text(), flags=re.DOTALL)


def on_the_cpu(block, places):
    """``block`` with the page's fixed places mapped to ``places`` and the CPU's sizes appended to each training and
    prediction command; pip only checks that the requirements are satisfied."""
    for page_path, here in places.items():
        block = block.replace(page_path, str(here))
    lines = []
    for line in block.splitlines():
        if re.search(r"\btrain\.py\b", line):
            line = re.sub(r"( \$RESUME)?$", lambda m: CPU_TRAIN + m.group(0), line)
        elif "predict.py" in line and "--check" not in line:
            line += CPU_PREDICT
        elif line.startswith("pip install"):
            line = line.replace("pip install", f"{sys.executable} -m pip install --dry-run --quiet")
        lines.append(line)
    return "\n".join(lines) + "\n"


def code_copy(folder):
    """The project's files as a fresh checkout holds them (what a notebook attaches as its code)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=PROJECT_ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    for name in listed:
        if (PROJECT_ROOT / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT_ROOT / name, folder / name)
    return folder


def read_only(root):
    for folder, _, files in os.walk(root):
        for path in [folder] + [os.path.join(folder, f) for f in files]:
            os.chmod(path, os.stat(path).st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def run_block(script, env, cwd, stop_when=None, pid_file=None, timeout=600):
    """Run ``script`` with bash. With ``stop_when`` (a path): once that file exists, SIGTERM the process whose id
    ``pid_file`` holds (a scheduler signals the job step), else the whole process group (a notebook's end).
    Returns (exit status, output)."""
    process = subprocess.Popen(["bash", "-c", script], cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    if stop_when is not None:
        deadline = time.monotonic() + timeout
        while not stop_when.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if process.poll() is None:
            if pid_file is not None:
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
            else:
                os.killpg(process.pid, signal.SIGTERM)
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A temporary machine: the inputs a notebook attaches (code, wheels, a read-only dataset, weights), its
    working and scratch disks, and the environment with this Python first on PATH."""
    base = tmp_path_factory.mktemp("notebook")
    inputs = base / "input"
    code_copy(inputs / "handpose-code")
    (inputs / "handpose-wheels").mkdir()
    subprocess.run([sys.executable, "-m", "data.synthetic", "--out", str(inputs / "freihand"), "--train", "16",
                    "--eval", "4", "--seed", "3", "--size", "64", "--workers", "1"], cwd=PROJECT_ROOT, check=True,
                   capture_output=True)
    read_only(inputs / "freihand")
    weights = inputs / "effb0-weights" / "effb0_1d.pth"
    weights.parent.mkdir()
    torch.save(models.create_model("effb0_1d", pretrained="none").state_dict(), weights)
    for folder in ("working", "temp"):
        (base / folder).mkdir()
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    for key in ("HANDPOSE_CACHE", "HANDPOSE_RUNS", "HANDPOSE_SUBMISSIONS", "HANDPOSE_SYNTHETIC"):
        env.pop(key, None)
    places = {"/kaggle/input": inputs, "/kaggle/working": base / "working", "/kaggle/temp": base / "temp"}
    return base, env, places


def test_the_page_has_the_blocks_this_test_runs():
    found = blocks()
    assert len(found) == 5
    assert "--resume" in found[1] and "torchrun --nproc_per_node 2" in found[2] and "#SBATCH --requeue" in found[4]


@pytest.mark.slow
def test_a_kaggle_notebook_trains_across_two_sessions_then_with_two_processes_and_predicts(world):
    base, env, places = world
    first, second, ddp, predict = (on_the_cpu(block, places) for block in blocks()[:4])
    run = base / "working" / "runs" / "effb0"
    code, output = run_block(first, env, base, stop_when=run / "log.csv")   # the session ends after an epoch
    assert code in (143, -signal.SIGTERM), output                          # bash itself may die of the signal
    assert "interrupted" in output and "last.pt" in output and (run / "last.pt").is_file()
    # the next session: the previous output attached as an input, a fresh working disk and scratch disk
    shutil.move(base / "working", base / "input" / "handpose-session-1")
    shutil.rmtree(base / "temp")
    (base / "working").mkdir()
    (base / "temp").mkdir()
    code, output = run_block(second, env, base)
    assert code == 0, output
    assert "resuming" in output and (run / "summary.json").is_file()
    code, output = run_block(ddp, env, base)
    assert code == 0, output
    assert (base / "working" / "runs" / "effb0_ddp" / "summary.json").is_file()
    code, output = run_block(predict, env, base)
    assert code == 0, output
    assert (base / "working" / "submissions" / "effb0.zip").is_file() and "OK: " in output
    assert not list((base / "input" / "freihand").rglob("val_split.json"))          # the dataset stayed as it was
    assert list((base / "temp" / "handpose-cache").glob("datasets/*/val_split.json"))


@pytest.mark.slow
def test_a_slurm_job_is_preempted_requeued_and_resumes(world, tmp_path):
    base, env, _ = world
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "srun").write_text(f'#!/bin/bash\necho $$ > {tmp_path / "step.pid"}\nexec "$@"\n')
    (shims / "scontrol").write_text(f'#!/bin/bash\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    for shim in shims.iterdir():
        shim.chmod(0o755)
    job = on_the_cpu(blocks()[4], {"/datasets/freihand": base / "input" / "freihand"})
    (tmp_path / "job.sbatch").write_text(job)
    env = {**env, "PATH": f"{shims}:{env['PATH']}", "SLURM_SUBMIT_DIR": str(base / "input" / "handpose-code"),
           "SLURM_JOB_ID": "4242", "TMPDIR": str(tmp_path / "node"), "HOME": str(tmp_path / "home")}
    weights = tmp_path / "home" / "weights" / "effb4_1d.pth"
    weights.parent.mkdir(parents=True)
    torch.save(models.create_model("effb4_1d", pretrained="none").state_dict(), weights)
    run = tmp_path / "home" / "handpose-runs" / "effb4_1d"
    code, output = run_block(f"bash {tmp_path / 'job.sbatch'}", env, tmp_path, stop_when=run / "log.csv",
                             pid_file=tmp_path / "step.pid")
    assert code == 143, output                                                       # preempted: SIGTERM
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    code, output = run_block(f"bash {tmp_path / 'job.sbatch'}", env, tmp_path)      # the requeued job
    assert code == 0, output
    assert "resuming" in output and (run / "summary.json").is_file()
