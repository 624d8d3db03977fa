"""Running the project's scripts, in the test process or as a user would, checking what they say and leave, and
making their data."""
import csv
import os
import signal
import subprocess
import sys

from core.common import PROJECT_ROOT

# the cheapest real training: the smallest arch, tiny images, on the CPU, nothing cached
TINY = ["--arch", "ghost_lite", "--img-size", "64", "--batch-size", "4", "--pretrained", "none", "--workers", "0",
        "--device", "cpu", "--set", "cache=false"]


def make_synthetic_set(root, train, evaluation, seed, size):
    """A synthetic FreiHAND-layout set in ``root``, made by the project's generator as a user would."""
    subprocess.run([sys.executable, "-m", "data.synthetic", "--out", str(root), "--train", str(train), "--eval",
                    str(evaluation), "--seed", str(seed), "--size", str(size)], cwd=PROJECT_ROOT, check=True,
                   capture_output=True)
    return root


def stop_signals_as_in_a_terminal():
    """``preexec_fn`` of a child process that a test signals: SIGINT and SIGTERM unblocked and at their defaults, as
    in a terminal's foreground job, whatever this process inherited (a script's background job starts with SIGINT
    ignored, and the child would keep it so: Python installs its Ctrl-C handler only over SIG_DFL)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def run_train(*args, env=None, **kwargs):
    """train.py in a process of its own, one thread: the finished ``subprocess.run``, output captured as text."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "train.py", *map(str, args)], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, env=env, **kwargs)


def log_epochs(folder):
    """The epochs of a run folder's log.csv, in their order."""
    with open(folder / "log.csv") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def assert_same_run(straight, resumed):
    """Two run folders ended with the same weights, EMA, schedule and log (lr and loss of every epoch)."""
    import torch
    from models.checkpoints import load_checkpoint
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(resumed / "last.pt")
    for weights in ("model", "ema"):
        for key in a[weights] or {}:
            torch.testing.assert_close(a[weights][key], b[weights][key], rtol=0, atol=1e-6, msg=f"{weights} {key}")
    assert a["scheduler"] == b["scheduler"] and a["epoch"] == b["epoch"]
    assert [(row["lr"], row["train_loss"]) for row in a["history"]] == \
        [(row["lr"], row["train_loss"]) for row in b["history"]]
    return a, b


def act_at_forward(monkeypatch, call, action):
    """The trainer's forward_loss runs ``action()`` at the start of its ``call``-th call (1-based): mid-step."""
    from training import trainer  # here, not above: conftest imports this module, and light test files need no trainer
    real, calls = trainer.forward_loss, {"n": 0}

    def forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            action()
        return real(*args, **kwargs)
    monkeypatch.setattr(trainer, "forward_loss", forward)


def run_main(main, argv, capsys):
    """A script's ``main`` (wrapped by common.cli) in this process: (exit code, stdout, stderr)."""
    code = 0
    try:
        main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def run_predict(argv, capsys):
    """predict.py's ``main`` in this process: (exit code, stdout, stderr)."""
    import predict  # here, not above: conftest imports this module, and light test files need no script
    return run_main(predict.main, argv, capsys)


def assert_one_line_error(code, err, *fragments):
    """Exit status 2 and one line on stderr (after any progress bar, which redraws itself with carriage returns)."""
    assert code == 2, err
    err = err.rsplit("\r", 1)[-1]
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err


def leftovers(folder):
    """Files in ``folder`` whose names mark a temp file or a partial upload."""
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def cuda_batch(root, size):
    """The 12 first training samples of ``root`` at ``size`` px, loaded as training loads them: pinned, then copied
    non_blocking to the GPU."""
    import torch  # here, not above: conftest imports this module, and light test files need no loader

    from data.dataset import make_dataset
    from data.loader import make_loader, to_device
    from data.readers import load_split
    dataset = make_dataset(load_split(root, "train"), size, cache=False)
    loader = make_loader(dataset, 12, train=False, workers=0, pin_memory=True)
    batch = next(iter(loader))
    assert batch["image"].is_pinned()
    return to_device(batch, torch.device("cuda"))
