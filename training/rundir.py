"""The run folder: its name, the run to --resume, its lock while a process trains in it, the words that say what
its last.pt holds and the command that continues it, and the K-fold set of runs it belongs to.

A run folder holds config.json (resolved), log.csv, curves.png, last.pt, best.pt, val_pred.npz, topk.pt (with
average_top_k), the TensorBoard event files (events.out.tfevents.*), summary.json at the end, and .lock.
"""
import fcntl
import json
import os
from datetime import datetime
from pathlib import Path

from core import locations
from core.common import UserError, check_writable, ensure_writable_folder, remove_stale_temps
from training import runstate
from models.checkpoints import load_checkpoint, newest_checkpoint

LOCK_FILE = ".lock"


def run_folder(args, config):
    """--out; on --resume without it the newest run (of --arch); else runs/RECIPE[_foldKofN]_STAMP."""
    if args.out:
        return Path(args.out)
    if args.resume:
        if not args.arch:
            return newest_checkpoint("last.pt", hint="or pass --out RUN_FOLDER").parent
        return _newest_run_of(args.arch)
    fold = f"_fold{config['fold']}of{config['folds']}" if config["folds"] else ""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")  # torchrun --rdzv-id: the same after a restart
    stamp = run_id if run_id != "none" else f"{datetime.now():%Y%m%d-%H%M%S}"
    return locations.root("runs") / f"{config['recipe']}{fold}_{stamp}"


def _saved_arch(last_pt):
    config_file = last_pt.parent / "config.json"
    try:
        return json.loads(config_file.read_text())["arch"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{config_file} cannot be read ({type(err).__name__}: {err}); resume that run by its "
                        f"folder: python train.py --out {last_pt.parent} --resume") from None


def _newest_run_of(arch):
    runs_root = locations.root("runs")
    runs = sorted((p for p in runs_root.glob("*/last.pt") if _saved_arch(p) == arch), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise UserError(f"no run of {arch} with a last.pt in {runs_root}/ to resume; start one without "
                        f"--resume or pass --out RUN_FOLDER")
    return runs[-1].parent


def elastic_restart():
    """True in a worker group that torchrun restarted (--max-restarts): the run continues from its last.pt."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def check_new_run_folder(folder):
    """Before any work: ``folder`` must not hold a run that can be resumed, and must be creatable."""
    if (folder / "last.pt").exists():
        raise UserError(f"{folder} already holds a run (last.pt); continue it with `python train.py --out {folder} "
                        f"--resume`, or choose another --out")
    check_writable(folder, "run folder")


def claim_run_folder(folder):
    """Create ``folder`` and lock it for this process (the lock ends with the process, however it ends); a
    folder another process trains in is a UserError. Temp files a killed run left behind are removed."""
    ensure_writable_folder(folder, "run folder")
    lock = open(folder / LOCK_FILE, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        raise UserError(f"{folder} is in use by another training process (pid {holder}); wait for it to end or "
                        f"choose another --out") from None
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    remove_stale_temps(folder)
    return lock


def resume_hint(folder, world_size):
    """What last.pt holds and the command that continues the run."""
    last = folder / "last.pt"
    if not last.is_file():
        return "no epoch had finished, so nothing was kept; run the same command again to start over"
    state = load_checkpoint(last)
    position = runstate.EpochPosition.from_dict(state["position"]) if state.get("position") else None
    return last_pt_holds(last, state["epoch"], state["config"], world_size, position)


def continue_command(folder, world_size, local_world_size=None):
    """The command that continues the run in ``folder`` over ``world_size`` processes (a state written inside an
    epoch resumes only over as many): plain python for one, torchrun for more (``local_world_size`` of them per
    node; with several nodes each runs torchrun as it did)."""
    if world_size == 1:
        return f"python train.py --out {folder} --resume"
    local = local_world_size or world_size
    if local == world_size:
        return f"torchrun --nproc_per_node {world_size} train.py --out {folder} --resume"
    return (f"torchrun --nnodes {world_size // local} --nproc_per_node {local} (and the rendezvous options it had, "
            f"on each node) train.py --out {folder} --resume")


def last_pt_holds(path, epochs_done, config, world_size, position=None):
    """What a last.pt holds, in words, and the command that continues the run (over ``world_size`` processes)."""
    command = continue_command(path.parent, world_size, int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
    if position is None:
        return f"{path} holds epoch {epochs_done} of {config['epochs']}; continue with: {command}"
    return (f"{path} holds {position.describe(config['accumulate'])} of {config['epochs']} (weights, EMA, optimiser, "
            f"schedule, scaler, random streams and the place in the epoch's order); continue with: {command}")


# --- a K-fold set of runs ---------------------------------------------------------------------------------------

def validation_files(record, path, explicit=None):
    """The validation predictions of a member: ``explicit``, else the val_pred.npz of the run it records, or,
    for a run of a K-fold set, the val_pred.npz of all K runs of that set (its out-of-fold predictions)."""
    if explicit is not None:
        return [Path(explicit)]
    run_dir = record.get("run_dir")
    if not run_dir:
        raise UserError(f"--fit-weights: {path} records no run folder; pass --val-preds (one file per member) "
                        f"or --weights")
    files = [Path(run) / "val_pred.npz" for run in fold_set(Path(run_dir))]
    for candidate in files:
        if not candidate.is_file():
            raise UserError(f"--fit-weights: {candidate} (validation predictions for {path}) does not exist; "
                            f"pass --val-preds or --weights")
    return files


RUN_ONLY_KEYS = ("fold", "device", "workers", "checkpoint_minutes", "cache", "precision")  # config keys that may differ
# between the runs of one fold set


def fold_set(run_dir):
    """The run folders of the K-fold set ``run_dir`` belongs to (runs beside it whose configs differ only in
    RUN_ONLY_KEYS), in fold order, ``run_dir`` itself for its own fold; just ``run_dir`` for a hold-out run (or a
    folder without a config.json). An incomplete set, or a fold trained twice, is a UserError."""
    def family(folder):
        config = json.loads((folder / "config.json").read_text())
        return config, {k: v for k, v in config.items() if k not in RUN_ONLY_KEYS}

    if not (run_dir / "config.json").is_file() or not family(run_dir)[0].get("folds"):
        return [run_dir]
    config, key = family(run_dir)
    by_fold = {config["fold"]: [run_dir]}
    for folder in sorted(run_dir.parent.glob("*/config.json")):
        other, other_key = family(folder.parent)
        if other_key == key and other["fold"] != config["fold"]:
            by_fold.setdefault(other["fold"], []).append(folder.parent)
    missing = [fold for fold in range(config["folds"]) if fold not in by_fold]
    if missing:
        raise UserError(f"--fit-weights: the {config['folds']}-fold set of {run_dir} lacks fold(s) "
                        f"{', '.join(map(str, missing))}; train them (python train.py --recipe {config['recipe']} "
                        f"--folds {config['folds']} --fold {missing[0]} ...) or pass --val-preds")
    twice = [runs for runs in by_fold.values() if len(runs) > 1]
    if twice:
        raise UserError(f"--fit-weights: fold set of {run_dir}: {' and '.join(map(str, twice[0]))} train the same "
                        f"fold; move one out of {run_dir.parent} or pass --val-preds")
    return [by_fold[fold][0] for fold in range(config["folds"])]
