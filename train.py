"""Train any registered architecture.

    python train.py --arch effb4_1d                      # the seed-000 recipe on data/freihand (or the synthetic set)
    python train.py --arch resnet101 --epochs 20 --set loss.coord_l1=2.0 --set aug.rotate.max_deg=90
    python train.py --arch effb4_1d --out runs/effb4_1d_x --resume
    torchrun --nproc_per_node 2 train.py --arch effb0_1d  # DDP; --batch-size is per process
    python train.py --list-archs

A run folder holds config.json (resolved), log.csv, curves.png, last.pt, best.pt, val_pred.npz, summary.json.
"""
import argparse
import contextlib
import fcntl
import copy
import json
import math
import os
import random
import shutil
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.rendezvous import rendezvous
from tqdm import tqdm

import augment
from core import geometry
from scoring import metrics
import models
from training import optimization
from training import recipes
from training import runlog
from training import runstate
from training.checkpoints import average_state_dicts, load_checkpoint, newest_checkpoint, save_checkpoint
from core.common import (EXIT_INTERRUPTED, EXIT_TERMINATED, RUNS_ROOT, SYNTHETIC_ROOT, Interrupted, Terminated, UserError,
                    atomic_write, check_writable, cli, ensure_writable_folder, progress, remove_stale_temps,
                    resolve_device)
from data import resolve_or_generate_data_root
from data.cache import make_dataset
from data.loader import make_loader, shut_down, to_device
from data.pseudo import WeightedUnion, pseudo_split
from data.readers import load_split
from models.losses import split_weights
from training.engine import forward_loss, optimizer_step
from uploads.records import load_predictions
from prediction.inference import camera_joints, predict_loader

# The laptop default: the synthetic set on the CPU with none of these keys given gets this short run, which
# ends in minutes; giving any of them on the command line hands the whole budget back to the recipe.
CPU_SYNTHETIC_BUDGET = {"img_size": 128, "epochs": 3, "batch_size": 16, "max_train_images": 480,
                        "max_val_images": 100}
SHORT_RUN_NOTE = ("; this was the short check that everything runs, too short to learn the fingers; the recipe "
                  "made for a CPU, `python train.py --recipe synthetic_cpu`, learns them: 76 % of the constant shape "
                  "on validation after 23 minutes on 2 cores, 73 % on evaluation with `predict.py --tta 10` "
                  "(README, Measured figures)")
CLI_KEYS = ("data_root", "epochs", "batch_size", "img_size", "lr", "pretrained", "device", "seed", "augs",
            "backgrounds", "workers", "folds", "fold", "pseudo_labels")
PATH_KEYS = ("data_root", "backgrounds", "pseudo_labels")
NEWER_KEYS = ("pseudo_labels", "pseudo_weight", "pseudo_keep")  # absent from older runs' configs: their defaults
RESUMABLE_OVERRIDES = ("device", "workers", "lr")   # what --resume may change: where it runs, the lr (scaled with
# its schedule) and clipping (after a NaN loss), how often a mid-epoch last.pt is written, and whether the images
# come from the decoded cache (the same pixels as the JPEGs)
RESUMABLE_SET_KEYS = ("grad_clip", "checkpoint_minutes", "cache")
LOCK_FILE = ".lock"


# --- configuration ----------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", help="a registered architecture (see --list-archs)")
    p.add_argument("--recipe", help="recipe name in recipes.py (default: the one named like --arch)")
    p.add_argument("--list-archs", action="store_true", help="print the architectures and exit")
    p.add_argument("--list-runs", action="store_true", help="print a table of the runs in runs/ and exit")
    p.add_argument("--data-root", help="dataset folder (default: data/freihand, else the synthetic set)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="per process")
    p.add_argument("--img-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--pretrained", help="imagenet | none | PATH to local weights (default: imagenet on real "
                                        "data, none on the synthetic set)")
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--seed", type=int)
    p.add_argument("--augs", help=f"comma-separated: {', '.join(augment.AUG_NAMES)}; or none")
    p.add_argument("--backgrounds", help="folder of background images for the background swap")
    p.add_argument("--workers", type=int, help="data-loading processes (-1: sized to the machine)")
    p.add_argument("--folds", type=int, help="K-fold cross-validation by hand: K folds (default 0: the saved 5 %% "
                                            "hold-out)")
    p.add_argument("--fold", type=int, help="which fold (0..K-1) is validated; its val_pred.npz is out-of-fold")
    p.add_argument("--pseudo-labels", metavar="PRED.npz",
                   help="add the images of the split a predict.py or ensemble.py file predicts, its joints as "
                        "their labels (--set pseudo_weight=W, pseudo_keep=SHARE)")
    p.add_argument("--out", help="run folder (default: runs/ARCH_YYYYmmdd-HHMMSS)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (default: the newest run "
                                                         "of --arch) from its last.pt")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any recipe key, e.g. loss.js1d=0.1, aug.rotate.max_deg=90, amp=false")
    return p.parse_args(argv)


def parse_value(text):
    """JSON when it parses (numbers, true/false, lists), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def check_type(key, value, default):
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(value, bool) and isinstance(default, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float))
        value = float(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise UserError(f"{key}={value!r}: expected {type(default).__name__} like {default!r}")
    return value


def parse_sets(items):
    """--set KEY=VALUE items -> [(key, value)], each value through ``parse_value``; an item without '=' is a
    UserError."""
    pairs = []
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep:
            raise UserError(f"--set {item!r}: expected KEY=VALUE")
        pairs.append((key.strip(), parse_value(text.strip())))
    return pairs


def set_key(config, dotted, value):
    """Set ``a.b.c`` in the config; the top-level key must exist and keep its type (loss/aug/model are
    checked by their owners)."""
    top, *rest = dotted.split(".")
    if top not in recipes.DEFAULTS:
        raise UserError(f"unknown config key {top!r}; known keys: {', '.join(recipes.DEFAULTS)}")
    if not rest:
        config[top] = check_type(top, value, recipes.DEFAULTS[top])
        return
    if not isinstance(config[top], dict):
        raise UserError(f"{dotted}: {top!r} has no sub-keys")
    node = config[top]
    for part in rest[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"{dotted}: {part!r} has no sub-keys")
    node[rest[-1]] = value


def resolve_config(args):
    """DEFAULTS <- recipe <- command line. Returns (config, keys given on the command line)."""
    name = args.recipe or args.arch
    if not name:
        raise UserError("give --arch NAME (see --list-archs) or --recipe NAME")
    if name not in recipes.RECIPES:
        models.model_entry(name)  # an unknown arch gets the registry's message listing valid names
        raise UserError(f"no recipe {name!r} in recipes.py; known recipes: {', '.join(recipes.recipe_names())}")
    config = recipes.recipe_config(name)
    if args.arch and args.arch != config["arch"]:
        raise UserError(f"recipe {name!r} trains {config['arch']!r}, not --arch {args.arch!r}")
    given = {key for key in CLI_KEYS if getattr(args, key) is not None}
    config.update({key: getattr(args, key) for key in given})
    for key, value in parse_sets(args.set):
        set_key(config, key, value)
        given.add(key.split(".")[0])
    validate_config(config)
    return config, given


def resume_config(args, folder):
    """(last.pt's state, its config with the changes --resume allows) for continuing the run in ``folder``. The
    run's original command line is accepted as it was typed: a value equal to the saved one is no change."""
    if not (folder / "last.pt").is_file():
        raise UserError(f"{folder} holds no last.pt to resume (no epoch of it finished); start it again without "
                        f"--resume: python train.py --out {folder} --arch ARCH ...")
    state = load_checkpoint(folder / "last.pt")
    config = copy.deepcopy(state["config"])
    for key in RESUMABLE_SET_KEYS + NEWER_KEYS:  # keys newer than the run, at the values it ran with
        config.setdefault(key, recipes.DEFAULTS[key])
    missing = sorted(set(recipes.DEFAULTS) - set(config))
    if missing:
        raise UserError(f"{folder / 'last.pt'} was written by an older train.py (its config lacks "
                        f"{', '.join(missing)}); start a new run")
    if args.arch and args.arch != config["arch"]:
        raise UserError(f"{folder} is a run of {config['arch']}, not --arch {args.arch}; resume it without --arch, "
                        f"or start a new {args.arch} run with another --out")
    changes = command_line_changes(args, config)
    fixed = [change for change in changes if change[1] not in RESUMABLE_OVERRIDES + RESUMABLE_SET_KEYS]
    if fixed:
        shown = "; ".join(f"{option} was {json.dumps(saved)}, given {json.dumps(given)}"
                          for option, _, saved, given in fixed)
        raise UserError(f"--resume continues {folder} with its saved config (its schedule included), but {shown}; "
                        f"only --{', --'.join(RESUMABLE_OVERRIDES)} and --set {', '.join(RESUMABLE_SET_KEYS)} may "
                        f"change: drop the change to continue the run, or start a new run with another --out")
    for _, key, _, value in changes:
        set_key(config, key, value)
    validate_config(config)
    check_position(state, folder)
    return state, config


NOT_SET = "(not set)"


def command_line_changes(args, config):
    """[(option as typed, config key, saved value, given value)] for every option on the command line whose value
    differs from the saved ``config``'s (paths compared resolved, augmentation lists as parsed)."""
    changes = []
    if args.recipe and args.recipe != config["recipe"]:
        changes.append(("--recipe", "recipe", config["recipe"], args.recipe))
    for key in CLI_KEYS:
        given = getattr(args, key)
        if given is not None and not same_value(key, config[key], given):
            changes.append((f"--{key.replace('_', '-')}", key, config[key], given))
    for dotted, value in parse_sets(args.set):
        trial = copy.deepcopy(config)
        set_key(trial, dotted, value)  # checks the key and converts the value to the key's type
        saved, given = dotted_value(config, dotted), dotted_value(trial, dotted)
        if saved != given:
            changes.append((f"--set {dotted}", dotted, saved, given))
    return changes


def same_value(key, saved, given):
    """Whether the command line's ``given`` value of ``key`` is the one the run saved (resolved)."""
    if key in PATH_KEYS:
        return bool(saved) == bool(given) and (not given or Path(given).resolve() == Path(saved).resolve())
    if key == "augs":
        return augment.parse_augs(given) == augment.parse_augs(saved)
    if key == "pretrained":  # auto was resolved when the run began; the weights come from last.pt anyway
        return given in ("auto", saved) or Path(given).resolve() == Path(saved).resolve()
    return given == saved


def dotted_value(config, dotted):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return NOT_SET
        node = node[part]
    return node


def check_position(state, folder):
    """A last.pt written inside an epoch continues it exactly only over the same number of processes (each
    process's place is in its own shard of the epoch's order)."""
    position, world_size = state.get("position"), int(os.environ.get("WORLD_SIZE", "1"))
    if position and position["world_size"] != world_size:
        raise UserError(f"{folder / 'last.pt'} stopped inside epoch {position['epoch']} of a run of "
                        f"{position['world_size']} processes, and this is {world_size}; resume it with "
                        f"{position['world_size']}: {continue_command(folder, position['world_size'])}")


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


def validate_config(config):
    models.model_entry(config["arch"])
    split_weights(config["loss"])  # weights and options of the loss terms
    augment.parse_augs(config["augs"])
    augment.resolve_options(config["aug"])
    for key, allowed in (("optimizer", optimization.OPTIMIZERS), ("schedule", optimization.SCHEDULES)):
        if config[key] not in allowed:
            raise UserError(f"{key}={config[key]!r}: choose one of {', '.join(allowed)}")
    if config["augs_final"]:
        augment.parse_augs(config["augs_final"])
    for key in ("epochs", "batch_size", "img_size", "accumulate"):
        if config[key] < 1:
            raise UserError(f"{key}={config[key]}: must be at least 1")
    if not (config["lr"] > 0 and math.isfinite(config["lr"])):
        raise UserError(f"lr={config['lr']}: must be a positive number")
    for key, low, high in (("ema_decay", 0.0, 0.99999), ("min_lr_ratio", 0.0, 1.0), ("warmup_start", 0.0, 1.0),
                           ("onecycle_pct", 0.01, 0.99), ("warmup_epochs", 0.0, config["epochs"]),
                           ("final_epochs", 0, config["epochs"]), ("weight_decay", 0.0, math.inf),
                           ("grad_clip", 0.0, math.inf), ("momentum", 0.0, 0.999), ("gamma", 1e-6, 1.0),
                           ("workers", -1, 256), ("seed", 0, 2 ** 31), ("max_train_images", 0, math.inf),
                           ("max_val_images", 0, math.inf), ("folds", 0, 1000), ("average_top_k", 0, 1000),
                           ("checkpoint_minutes", 0.0, math.inf), ("pseudo_weight", 1e-6, 1e6),
                           ("pseudo_keep", 1e-6, 1.0)):
        if not (math.isfinite(config[key]) and low <= config[key] <= high):
            raise UserError(f"{key}={config[key]}: must lie in [{low}, {high}]")
    if not all(isinstance(m, (int, float)) and 0 < m <= 1 for m in config["milestones"]):
        raise UserError(f"milestones={config['milestones']}: fractions of the epochs, each in (0, 1]")
    if config["folds"] == 1 or (config["folds"] and not 0 <= config["fold"] < config["folds"]):
        raise UserError(f"--folds {config['folds']} --fold {config['fold']}: K is at least 2 and the fold lies in "
                        f"0..K-1")
    if config["fold"] and not config["folds"]:
        raise UserError(f"--fold {config['fold']} needs --folds K (the number of folds)")
    if config["augs_final"] and not config["final_epochs"]:
        raise UserError("augs_final is set but final_epochs=0: give --set final_epochs=N, or drop augs_final")
    check_model_options(config)
    if config["schedule"] == "onecycle" and config["warmup_epochs"]:
        raise UserError("schedule=onecycle warms up by itself: set warmup_epochs=0 or use schedule=cosine")


def check_model_options(config):
    """A bad model option is one line now (``models.check_model_options``)."""
    try:
        models.check_model_options(config["arch"], config["model"])
    except ValueError as err:
        raise UserError(f"model options {config['model']} for {config['arch']}: {err}") from None


# --- distributed ------------------------------------------------------------------------------------------

def init_distributed(device_name):
    """(rank, world_size, device). Under torchrun: nccl on GPUs, gloo on the CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels
    if world_size == 1:
        return 0, 1, device
    if device.type == "cuda":
        local_rank = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    # torchrun's agent keeps one store across the restarts of a group (--max-restarts); the keys of each attempt
    # get their own prefix, or a restarted group would read the dead attempt's addresses and never connect
    store, rank, world_size = next(rendezvous("env://"))
    store = dist.PrefixStore(f"attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=rank,
                            world_size=world_size)
    return rank, world_size, device


def barrier(world_size):
    if world_size > 1:
        dist.barrier()


def ranks_hold_same_weights(model):
    """True when every rank's parameters equal rank 0's, compared against a broadcast copy of rank 0's."""
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    reference = flat.clone()
    dist.broadcast(reference, src=0)
    same = torch.tensor([float(torch.equal(flat, reference))], device=flat.device)
    dist.all_reduce(same, op=dist.ReduceOp.MIN)
    return bool(same.item())


# --- the run folder -----------------------------------------------------------------------------------------

def run_folder(args, config):
    if args.out:
        return Path(args.out)
    if args.resume:
        if not args.arch:
            return newest_checkpoint("last.pt", RUNS_ROOT, hint="or pass --out RUN_FOLDER").parent
        return _newest_run_of(args.arch)
    fold = f"_fold{config['fold']}of{config['folds']}" if config["folds"] else ""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")  # torchrun --rdzv-id: the same after a restart
    stamp = run_id if run_id != "none" else f"{datetime.now():%Y%m%d-%H%M%S}"
    return RUNS_ROOT / f"{config['recipe']}{fold}_{stamp}"


def _saved_arch(last_pt):
    config_file = last_pt.parent / "config.json"
    try:
        return json.loads(config_file.read_text())["arch"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{config_file} cannot be read ({type(err).__name__}: {err}); resume that run by its "
                        f"folder: python train.py --out {last_pt.parent} --resume") from None


def _newest_run_of(arch):
    runs = sorted((p for p in RUNS_ROOT.glob("*/last.pt") if _saved_arch(p) == arch), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise UserError(f"no run of {arch} with a last.pt in {RUNS_ROOT.name}/ to resume; start one without "
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


# --- reproducibility ---------------------------------------------------------------------------------------

def seed_everything(seed):
    """Every RNG stream re-seeded; begin_epoch calls it with ``seed * 1000 + epoch`` at each epoch start, so a run
    resumed at an epoch's start draws the same augmentations and dropout as one that never stopped (inside an
    epoch the saved streams are restored instead)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


# --- one epoch ------------------------------------------------------------------------------------------------

def train_one_epoch(ctx, epoch):
    """Returns (mean loss, mean loss parts, training images per second, lr at the epoch's first step). Each
    optimiser step sums the gradients of ``accumulate`` batches, then steps the lr schedule and the EMA; after each
    the run may save its place in the epoch or stop (``pause_point``)."""
    config, device, accumulate = ctx["config"], ctx["device"], ctx["config"]["accumulate"]
    ctx["model"].train()
    position, generator = begin_epoch(ctx, epoch)
    augmenter = ctx["augmenter_final"] if epoch > config["epochs"] - config["final_epochs"] else ctx["augmenter"]
    total = position.epoch_batches
    bar = progress(ctx["train_loader"], desc=f"epoch {epoch}/{config['epochs']}", total=total,
                   initial=position.batches, enabled=ctx["rank"] == 0)
    window, start = [], time.perf_counter() - position.seconds
    for micro, batch in enumerate(bar, start=position.batches):
        if micro == total:
            break  # the remainder that would not fill an optimiser step
        batch = augmenter(to_device(batch, device), generator=generator)
        loss, parts = train_batch(ctx, batch, epoch, micro)
        position.add({"total": loss, **parts}, batch["image"].shape[0] * ctx["world_size"])
        window.append(loss.detach())
        if len(window) == 10 or micro == total - 1:
            check_finite(torch.stack(window), epoch, micro, ctx)
            bar.set_postfix(loss=f"{torch.stack(window).mean().item():.4f}",
                            img_s=f"{position.images / (time.perf_counter() - start):.0f}", refresh=False)
            window = []
        if (micro + 1) % accumulate == 0:
            position.batches, position.seconds = micro + 1, time.perf_counter() - start
            window = pause_point(ctx, position, generator, window)
    bar.close()
    parts = {k: float(v) / position.count for k, v in position.totals.items()}
    return parts.pop("total"), parts, position.images / (time.perf_counter() - start), position.lr


def begin_epoch(ctx, epoch):
    """Seed the epoch's random streams from (seed, epoch) and set its shuffle; when the run resumes inside this
    epoch, restore the streams and skip the batches done. Returns (EpochPosition, augmentation generator)."""
    config, device = ctx["config"], ctx["device"]
    seed_everything(config["seed"] * 1000 + epoch)
    generator = torch.Generator(device=device).manual_seed(config["seed"] * 100003 + epoch)
    position = ctx.pop("position", None)
    if position is None:
        position = runstate.EpochPosition(epoch, ctx["steps_per_epoch"] * config["accumulate"],
                                          ctx["optimizer"].param_groups[0]["lr"], ctx["world_size"])
    elif not runstate.restore_streams(position.streams[ctx["rank"]], device, generator) and ctx["rank"] == 0:
        print(f"last.pt was written on {position.streams[0]['device']}: on {device.type} the rest of epoch {epoch} "
              f"draws other augmentations and dropout than the run would have drawn there")
    ctx["train_loader"].sampler.set_epoch(epoch, skip=position.batches * config["batch_size"])
    return position, generator


def train_batch(ctx, batch, epoch, micro):
    """Forward and backward of one augmented batch, and on the last batch of an optimiser step the step itself.
    Returns (loss, unweighted loss parts)."""
    model, config, steps_per_epoch = ctx["model"], ctx["config"], ctx["steps_per_epoch"]
    accumulate = config["accumulate"]
    step = (epoch - 1) * steps_per_epoch + micro // accumulate  # optimiser steps before this one
    last_micro = (micro + 1) % accumulate == 0
    # DDP decides in the forward whether the backward all-reduces: both under no_sync but on the last batch
    with model.no_sync() if ctx["world_size"] > 1 and not last_micro else contextlib.nullcontext():
        loss, parts = forward_loss(model, batch, config, ctx["device"], ctx["channels_last"],
                                   step / (steps_per_epoch * config["epochs"]))
        ctx["scaler"].scale(loss / accumulate).backward()
    if last_micro:
        lr_used = ctx["optimizer"].param_groups[0]["lr"]
        optimizer_step(ctx["net"], ctx["optimizer"], ctx["scaler"], config["grad_clip"], ctx["scheduler"],
                       ctx["ema"], step + 1)
        ctx["tb"].step(step + 1, {"total": loss.detach(), **parts}, lr_used)
    return loss, parts


def pause_point(ctx, position, generator, window):
    """After an optimiser step: when a stop signal arrived (on any process) or ``checkpoint_minutes`` passed since
    last.pt was written, check the losses not yet checked (last.pt never keeps a NaN loss's weights), write last.pt
    with the place in the epoch, and stop for a signal. Returns the losses still to check."""
    minutes = ctx["config"]["checkpoint_minutes"]
    due = ctx["rank"] == 0 and minutes > 0 and time.monotonic() - ctx["last_saved"] >= minutes * 60
    signum, save = runstate.agree(ctx["signals"], ctx["world_size"], ctx["device"], due)
    if not (signum or save):
        return window
    if window:
        check_finite(torch.stack(window), position.epoch, position.batches - 1, ctx)
    save_position(ctx, position, generator)
    if signum:
        stop(ctx, signum, position.epoch - 1, position)
    return []


def save_position(ctx, position, generator):
    """last.pt inside an epoch: what it holds after an epoch, plus the place in this one and every process's random
    streams; rank 0 writes it while the others wait."""
    streams = runstate.random_streams(ctx["device"], generator)
    position.streams = runstate.gather_streams(streams, ctx["world_size"])
    if ctx["rank"] == 0:
        save_checkpoint({**last_state(ctx, position.epoch - 1), "position": position.to_dict()},
                        ctx["folder"] / "last.pt")
    barrier(ctx["world_size"])
    ctx["last_saved"], ctx["last_pt"] = time.monotonic(), position.describe(ctx["config"]["accumulate"])


def stop(ctx, signum, epochs_done, position=None):
    """End the run after SIGINT or SIGTERM, last.pt written: one line (rank 0's) saying what last.pt holds and the
    command that continues, and the exit status of that signal (130, 143)."""
    ctx["tb"].close()
    line = ""
    if ctx["rank"] == 0:
        holds = last_pt_holds(ctx["folder"] / "last.pt", epochs_done, ctx["config"], ctx["world_size"], position)
        line = f"stopped by {runstate.SIGNAL_NAMES[signum]}; {holds}"
    raise Interrupted(line, status=runstate.exit_status(signum))


def last_pt_holds(path, epochs_done, config, world_size, position=None):
    """What a last.pt holds, in words, and the command that continues the run (over ``world_size`` processes)."""
    command = continue_command(path.parent, world_size, int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
    if position is None:
        return f"{path} holds epoch {epochs_done} of {config['epochs']}; continue with: {command}"
    return (f"{path} holds {position.describe(config['accumulate'])} of {config['epochs']} (weights, EMA, optimiser, "
            f"schedule, scaler, random streams and the place in the epoch's order); continue with: {command}")


def check_finite(losses, epoch, step, ctx):
    if not torch.isfinite(losses).all():
        folder, lr, saved = ctx["folder"], ctx["config"]["lr"], ctx.get("last_pt")
        if saved is not None:  # what the last write of last.pt held: every write follows a check of the losses
            advice = (f"{folder / 'last.pt'} keeps {saved}; continue it with a lower lr and clipping: "
                      f"python train.py --out {folder} --resume --lr {lr / 3:.3g} --set grad_clip=1.0")
        else:
            advice = (f"no epoch had finished, so nothing was kept; run the same command again with --lr "
                      f"{lr / 3:.3g} --set grad_clip=1.0 added")
        raise UserError(f"the loss became {losses[~torch.isfinite(losses)][0].item()} at epoch {epoch}, step "
                        f"{step}: training stopped; {advice}")


def validate(ctx):
    """Plain (no TTA) prediction of the validation split by the evaluated weights (the EMA when kept): metrics
    dict and the predictions."""
    predictions = predict_loader(eval_net(ctx), ctx["val_loader"], ctx["device"], tta=1, amp=ctx["config"]["amp"],
                                 channels_last=ctx["channels_last"], desc="validate")
    xyz = camera_joints(predictions, ctx["stats"])
    result = metrics.evaluate(xyz, predictions["xyz"])
    return result, xyz, predictions["ids"], predictions["uvd"][:runlog.TB_IMAGES, :, :2]


def skeleton_panel(ctx, uv_pred):
    """The first validation images with their predicted and true skeletons, for TensorBoard."""
    samples = [ctx["val_set"][i] for i in range(len(uv_pred))]
    images = np.stack([s["image"].permute(1, 2, 0).numpy() for s in samples])
    return runlog.skeleton_panel(images, uv_pred, np.stack([s["uvd"][:, :2].numpy() for s in samples]))


# --- set-up and the loop --------------------------------------------------------------------------------------

def apply_cpu_budget(config, given, announce):
    """The laptop default: synthetic data on the CPU, a recipe made for GPUs (``short_on_cpu``), none of the
    budget's keys given -> CPU_SYNTHETIC_BUDGET."""
    if given & set(CPU_SYNTHETIC_BUDGET) or not config["short_on_cpu"]:
        return
    config.update(CPU_SYNTHETIC_BUDGET)
    announce(f"synthetic data on the CPU: a short run ({config['img_size']} px, {config['epochs']} epochs of "
             f"{config['max_train_images']} images) that ends in minutes; give --epochs, --img-size or "
             f"--batch-size to run the recipe instead")


def is_short_run(config):
    return all(config[key] == value for key, value in CPU_SYNTHETIC_BUDGET.items())


def limit(split, max_images, seed):
    """A fixed random subset of at most ``max_images`` images (0 = all)."""
    if not max_images or max_images >= len(split):
        return split
    return split.subset(np.sort(np.random.default_rng(seed).choice(len(split), max_images, replace=False)))


def eval_net(ctx):
    """The weights that are validated, saved in best.pt and predicted with: the EMA when kept, else the model."""
    return ctx["ema"].module if ctx["ema"] is not None else ctx["net"]


def training_stats(split):
    """Facts about the training labels that predictions need later (stored in every checkpoint): the mean bone
    length, the constant shape (the yardstick's hand) and the mean root depth."""
    bone = split.scale if split.scale is not None else geometry.bone_length(split.xyz)
    hands = split.xyz[np.unique(split.ann_ids, return_index=True)[1]]  # one pose per hand, not per image version
    return {"bone_length_m": float(np.mean(bone)),
            "constant_shape_m": metrics.generalized_procrustes_mean(hands).tolist(),
            "root_depth_m": float(np.mean(split.xyz[:, geometry.ROOT_JOINT, 2]))}


def resolve_run(args):
    """(config, run folder or None when it is still to be named, last.pt's state or None, keys given on the
    command line) for a new run, a --resume, or a group torchrun restarted."""
    if not args.resume and args.out and elastic_restart() and (Path(args.out) / "last.pt").is_file():
        args.resume = True  # torchrun restarted the group with the same command line: continue from its last.pt
    if args.resume:
        folder = run_folder(args, None)
        resume_state, config = resume_config(args, folder)
        return config, folder, resume_state, set()
    config, given = resolve_config(args)
    return config, None, None, given


def locate_data(config, rank, world_size, announce):
    """The dataset folder; the synthetic default is generated once, by rank 0, while the others wait."""
    if rank == 0:
        data_root = resolve_or_generate_data_root(config["data_root"] or None, announce)
    barrier(world_size)
    if rank:
        data_root = resolve_or_generate_data_root(config["data_root"] or None, announce=lambda *_: None)
    return data_root


def settle_new_run(args, config, given, data_root, device, rank, announce):
    """A new run's last config decisions (the CPU budget on the synthetic set, which weights) and its folder,
    checked before any work."""
    synthetic = Path(data_root).resolve() == SYNTHETIC_ROOT.resolve()
    if synthetic and device.type == "cpu":
        apply_cpu_budget(config, given, announce)
    if config["pretrained"] == "auto":
        config["pretrained"] = "none" if synthetic else "imagenet"
    config["data_root"] = str(data_root)
    folder = run_folder(args, config)
    if rank == 0:
        check_new_run_folder(folder)
    return folder


def load_datasets(config, data_root, world_size, announce):
    """(train split, val split, train dataset, val dataset) at the config's input size."""
    train_split, val_split = (limit(load_split(data_root, name, config["folds"], config["fold"]), config[key],
                                    config["seed"])
                              for name, key in (("train", "max_train_images"), ("val", "max_val_images")))
    if not train_split.labelled or not val_split.labelled:
        raise UserError(f"{data_root}: the train and val splits need *_xyz.json labels")
    train_set, val_set = (make_dataset(split, config["img_size"], cache=config["cache"], announce=announce)
                          for split in (train_split, val_split))
    if config["pseudo_labels"]:
        train_set = with_pseudo_labels(train_set, config, data_root, announce)
    if len(train_set) < config["batch_size"] * world_size:
        raise UserError(f"{len(train_set)} training images are fewer than one batch of {config['batch_size']} "
                        f"per process; lower --batch-size")
    return train_split, val_split, train_set, val_set


def with_pseudo_labels(train_set, config, data_root, announce):
    """The training set joined by the pseudo-labelled images of config['pseudo_labels'] (data/pseudo.py)."""
    path = config["pseudo_labels"]
    split, info = pseudo_split(load_predictions(path), path, data_root, config["pseudo_keep"])
    announce(f"pseudo-labels: {info['kept']} of {info['images']} images of the {info['split']} split labelled by "
             f"{path} (sha256 {info['sha256'][:12]}), loss weight {config['pseudo_weight']:g}")
    if config.setdefault("pseudo_labels_sha256", info["sha256"]) != info["sha256"]:  # a resumed run's file changed
        raise UserError(f"--pseudo-labels {path} changed since this run began (sha256 {info['sha256'][:12]}, was "
                        f"{config['pseudo_labels_sha256'][:12]}): restore that file, or start a new run")
    pseudo_set = make_dataset(split, config["img_size"], cache=config["cache"], announce=announce)
    return WeightedUnion([train_set, pseudo_set], [1.0, config["pseudo_weight"]])


def build_context(args):
    """Everything a run needs: config, data, model, optimizer, folder; resumes state when asked."""
    config, folder, resume_state, given = resolve_run(args)
    rank, world_size, device = init_distributed(config["device"])
    announce = print if rank == 0 else (lambda *_: None)
    data_root = locate_data(config, rank, world_size, announce)
    if resume_state is None:
        folder = settle_new_run(args, config, given, data_root, device, rank, announce)
    seed_everything(config["seed"])
    train_split, val_split, train_set, val_set = load_datasets(config, data_root, world_size, announce)
    ctx = {"config": config, "folder": folder, "rank": rank, "world_size": world_size, "device": device,
           "channels_last": config["channels_last"], "history": [], "best": math.inf, "start_epoch": 1,
           "stats": training_stats(train_split), "val_set": val_set}
    ctx["model"] = build_training(ctx, train_set, resume_state)
    ctx["baseline"] = metrics.constant_shape_mm(ctx["stats"]["constant_shape_m"], val_split.xyz)
    announce(f"{config['recipe']}: {config['arch']} ({ctx['params'] / 1e6:.2f} M params), {len(train_set)} training "
             f"/ {len(val_set)} validation images from {data_root}, {config['img_size']} px, batch "
             f"{config['batch_size']}{f' x {world_size} processes' if world_size > 1 else ''}, {device}, run folder "
             f"{folder}; the constant-shape baseline (one hand for all) scores {ctx['baseline']:.2f} mm PA-MPJPE "
             f"on validation")
    if resume_state is not None:
        inside = f", at {ctx['last_pt']}" if "position" in ctx else ""
        announce(f"resuming {folder} after epoch {resume_state['epoch']} of {config['epochs']}{inside}")
    return ctx


def build_training(ctx, train_set, resume_state):
    """Model, optimiser, schedule, EMA, loaders and augmenters into ``ctx`` (restored from ``resume_state``
    when given). Returns the training model (wrapped for DDP / compile); ctx['net'] is the bare one."""
    config, device, world_size = ctx["config"], ctx["device"], ctx["world_size"]
    cuda = device.type == "cuda"
    model = models.create_model(config["arch"], pretrained="none" if resume_state else config["pretrained"],
                                **config["model"])
    model = model.to(device, memory_format=torch.channels_last if config["channels_last"] else torch.preserve_format)
    optimizer = optimization.make_optimizer(model, config)
    train_loader = make_loader(train_set, config["batch_size"], train=True, workers=config["workers"],
                               seed=config["seed"], rank=ctx["rank"], world_size=world_size, pin_memory=cuda,
                               shielded=True)
    steps_per_epoch = len(train_loader) // config["accumulate"]
    if steps_per_epoch < 1:
        raise UserError(f"an epoch of {len(train_loader)} batches is less than one optimiser step of "
                        f"accumulate={config['accumulate']} batches; lower --set accumulate")
    ctx.update(optimizer=optimizer, train_loader=train_loader, steps_per_epoch=steps_per_epoch,
               scaler=torch.amp.GradScaler("cuda", enabled=cuda and config["amp"] and
                                           not torch.cuda.is_bf16_supported()),
               scheduler=optimization.make_scheduler(optimizer, config, steps_per_epoch),
               ema=optimization.make_ema(model, config), params=sum(p.numel() for p in model.parameters()),
               val_loader=make_loader(ctx["val_set"], config["batch_size"], train=False, workers=config["workers"],
                                      pin_memory=cuda, shielded=True))
    if resume_state is not None:
        restore(ctx, model, resume_state)
    ctx["net"] = model  # the bare model: validation and checkpoints
    if world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    if config["compile"]:
        model = torch.compile(model)
    ctx["augmenter"], ctx["augmenter_final"] = (
        augment.Augmenter(augment.parse_augs(augs), augment.resolve_options(config["aug"]), config["img_size"],
                          device, backgrounds=config["backgrounds"] or None)
        for augs in (config["augs"], config["augs_final"] or config["augs"]))
    return model


def restore(ctx, model, state):
    model.load_state_dict(state["model"])
    if ctx["ema"] is not None:
        ctx["ema"].module.load_state_dict(state["ema"])
    ctx["optimizer"].load_state_dict(state["optimizer"])
    ctx["scheduler"].load_state_dict(state["scheduler"])
    saved_lr = state["config"]["lr"]
    if ctx["config"]["lr"] != saved_lr:  # --resume --lr: the schedule goes on, scaled to the new peak
        optimization.rescale_lr(ctx["optimizer"], ctx["scheduler"], ctx["config"]["lr"] / saved_lr)
    ctx["scaler"].load_state_dict(state["scaler"])
    ctx["history"], ctx["best"] = state["history"], state["best_val_pa_mpjpe_mm"]
    ctx["start_epoch"], ctx["last_pt"] = state["epoch"] + 1, f"epoch {state['epoch']}"
    if state.get("position"):  # written inside an epoch: train_one_epoch continues it from there
        position = ctx["position"] = runstate.EpochPosition.from_dict(state["position"])
        position.lr *= ctx["config"]["lr"] / saved_lr
        ctx["last_pt"] = position.describe(ctx["config"]["accumulate"])
        if position.epoch_batches != ctx["steps_per_epoch"] * ctx["config"]["accumulate"]:
            raise UserError(f"{ctx['folder'] / 'last.pt'} stopped inside an epoch of {position.epoch_batches} "
                            f"batches per process, and the training split now makes "
                            f"{ctx['steps_per_epoch'] * ctx['config']['accumulate']}: the dataset changed; "
                            f"restore it, or start a new run with another --out")


def save_epoch(ctx, epoch, result, val_xyz, val_ids):
    """best.pt (when validation improved) and val_pred.npz, then last.pt, then log.csv and curves.png."""
    folder = ctx["folder"]
    if result["pa_mpjpe_mm"] <= ctx["best"]:
        ctx["best"] = result["pa_mpjpe_mm"]
        save_best(folder, {"model": eval_net(ctx).state_dict(), "config": ctx["config"], "epoch": epoch,
                           "history": ctx["history"], "stats": ctx["stats"], "best_val_pa_mpjpe_mm": ctx["best"]},
                  val_xyz, val_ids)
    keep_top_k(ctx, epoch, result["pa_mpjpe_mm"], eval_net(ctx).state_dict())
    save_checkpoint(last_state(ctx, epoch), folder / "last.pt")
    ctx["last_saved"], ctx["last_pt"] = time.monotonic(), f"epoch {epoch}"
    runlog.write_log(folder, ctx["history"])
    runlog.plot_curves(folder, ctx["history"], ctx["baseline"])


def last_state(ctx, epochs_done):
    """What last.pt holds after ``epochs_done`` epochs: the raw weights, EMA, optimiser, schedule and scaler, the
    config, the log's rows and the training stats (save_position adds the place inside the next epoch)."""
    return {"model": ctx["net"].state_dict(), "config": ctx["config"], "epoch": epochs_done,
            "history": ctx["history"], "stats": ctx["stats"], "best_val_pa_mpjpe_mm": ctx["best"],
            "ema": ctx["ema"].module.state_dict() if ctx["ema"] is not None else None,
            "optimizer": ctx["optimizer"].state_dict(), "scheduler": ctx["scheduler"].state_dict(),
            "scaler": ctx["scaler"].state_dict()}


def save_best(folder, state, val_xyz, val_ids):
    save_checkpoint(state, folder / "best.pt")
    with atomic_write(folder / "val_pred.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, xyz=val_xyz, ids=val_ids, split="val")


def keep_top_k(ctx, epoch, val_mm, weights):
    """topk.pt: the evaluated weights of the ``average_top_k`` best epochs so far, as (val mm, epoch, weights)."""
    k = ctx["config"]["average_top_k"]
    if k < 2:
        return
    path = ctx["folder"] / "topk.pt"
    kept = torch.load(path, map_location="cpu", weights_only=False)["entries"] if path.is_file() else []
    kept = [e for e in kept if e[1] < epoch]  # a resumed run repeats the epoch it was killed in
    weights = {key: value.detach().cpu().clone() for key, value in weights.items()}
    kept = sorted(kept + [(val_mm, epoch, weights)], key=lambda e: e[0])[:k]
    if any(e[1] == epoch for e in kept):
        save_checkpoint({"entries": kept, "config": ctx["config"]}, path)


def average_top_k(ctx):
    """Average the kept best epochs' weights; when that validates better than best.pt, it becomes best.pt.
    Returns the summary's record of it, or None when averaging is off."""
    path = ctx["folder"] / "topk.pt"
    if ctx["config"]["average_top_k"] < 2 or not path.is_file():
        return None
    entries = torch.load(path, map_location="cpu", weights_only=False)["entries"]
    net = eval_net(ctx)
    kept_weights = copy.deepcopy(net.state_dict())
    net.load_state_dict(average_state_dicts([e[2] for e in entries]))
    result, val_xyz, val_ids, _ = validate(ctx)
    better = result["pa_mpjpe_mm"] < ctx["best"]
    if better:
        ctx["best"] = result["pa_mpjpe_mm"]
        state = load_checkpoint(ctx["folder"] / "best.pt")
        save_best(ctx["folder"], {**state, "model": net.state_dict(), "best_val_pa_mpjpe_mm": ctx["best"],
                                  "averaged_epochs": [e[1] for e in entries]}, val_xyz, val_ids)
    net.load_state_dict(kept_weights)
    print(f"average of the {len(entries)} best epochs {sorted(e[1] for e in entries)}: validation "
          f"{result['pa_mpjpe_mm']:.2f} mm{' (now best.pt)' if better else ' (best.pt kept)'}")
    return {"epochs": sorted(e[1] for e in entries), "val_pa_mpjpe_mm": result["pa_mpjpe_mm"], "used": better}


@cli
def main(argv=None):
    args = parse_args(argv)
    if args.list_archs:
        print_archs()
        return
    if args.list_runs:
        table = runlog.list_runs(RUNS_ROOT)
        print(table.to_string(index=False) if len(table) else f"no runs with a finished epoch in {RUNS_ROOT}")
        return
    ctx = build_context(args)
    folder = ctx["folder"]
    new_folder = not folder.exists()
    lock = claim_run_folder(folder) if ctx["rank"] == 0 else None  # held until the process ends
    try:
        train(ctx)
    except BaseException as err:
        if ctx["rank"] == 0 and new_folder and not (folder / "last.pt").exists():
            lock.close()
            shutil.rmtree(folder, ignore_errors=True)  # nothing worth keeping: leave no half-made run behind
        if isinstance(err, KeyboardInterrupt):  # a second signal, or one outside the epochs: rank 0 says it
            line = f"training stopped; {resume_hint(folder, ctx['world_size'])}" if ctx["rank"] == 0 else ""
            raise Interrupted(line, status=EXIT_TERMINATED if isinstance(err, Terminated) else EXIT_INTERRUPTED) \
                from None
        raise
    finally:
        for loader in (ctx["train_loader"], ctx["val_loader"]):
            shut_down(loader)  # their workers ignore stop signals: end them before the interpreter exits
        if lock is not None:
            lock.close()  # the folder is free again (also when main runs inside another program, such as a test)


def train(ctx):
    """config.json, then every epoch: train, validate, save; then the summary. Inside the epochs SIGINT and
    SIGTERM stop the run after the step in progress, with a last.pt that continues it exactly (``runstate``)."""
    config, folder, rank = ctx["config"], ctx["folder"], ctx["rank"]
    if rank == 0:
        with atomic_write(folder / "config.json") as tmp:
            tmp.write_text(json.dumps(config, indent=2))
    position = ctx.get("position")
    ctx["tb"] = runlog.TensorBoardLog(folder, enabled=rank == 0, purge_step=(ctx["start_epoch"] - 1) *
                                      ctx["steps_per_epoch"] + (position.batches // config["accumulate"]
                                                                if position else 0))
    ctx["last_saved"] = time.monotonic()
    speeds = [row["train_images_per_s"] for row in ctx["history"]]
    with runstate.StopSignals() as signals:
        ctx["signals"] = signals
        for epoch in range(ctx["start_epoch"], config["epochs"] + 1):
            started = time.perf_counter()
            loss, parts, speed, lr = train_one_epoch(ctx, epoch)
            speeds.append(speed)
            if rank == 0:
                end_epoch(ctx, epoch, {"lr": lr, "train_loss": loss, **{f"loss_{k}": v for k, v in parts.items()},
                                       "train_images_per_s": speed}, started)
            barrier(ctx["world_size"])
            signum, _ = runstate.agree(signals, ctx["world_size"], ctx["device"])
            if signum:  # arrived during validation or the save: last.pt holds this epoch
                stop(ctx, signum, epoch)
    finish(ctx, speeds)


def end_epoch(ctx, epoch, row, started):
    """Validate, add the epoch's row to the history, save (best.pt, last.pt, the log) and print the epoch's line."""
    result, val_xyz, val_ids, uv_pred = validate(ctx)
    ctx["history"].append({"epoch": epoch, "lr": row.pop("lr"), "train_loss": row.pop("train_loss"),
                           **{k: v for k, v in row.items() if k.startswith("loss_")},
                           "val_pa_mpjpe_mm": result["pa_mpjpe_mm"],
                           "val_of_constant": result["pa_mpjpe_mm"] / ctx["baseline"],
                           "val_constant_shape_mm": ctx["baseline"], "val_auc": result["auc_0_50mm"],
                           "val_mpjpe_mm": result["mpjpe_mm"], "train_images_per_s": row["train_images_per_s"],
                           "epoch_seconds": time.perf_counter() - started})
    save_epoch(ctx, epoch, result, val_xyz, val_ids)
    ctx["tb"].epoch(epoch, ctx["history"][-1], skeleton_panel(ctx, uv_pred))
    tqdm.write(f"epoch {epoch}/{ctx['config']['epochs']}  loss {ctx['history'][-1]['train_loss']:.4f}  val PA-MPJPE "
               f"{result['pa_mpjpe_mm']:.2f} mm = {result['pa_mpjpe_mm'] / ctx['baseline']:.0%} of the "
               f"constant shape  AUC {result['auc_0_50mm']:.3f}  {row['train_images_per_s']:.0f} img/s")


def finish(ctx, speeds):
    summary_extra = {}
    if ctx["world_size"] > 1:
        summary_extra["ranks_hold_same_weights"] = ranks_hold_same_weights(ctx["net"])
        if ctx["ema"] is not None:
            summary_extra["ranks_hold_same_ema"] = ranks_hold_same_weights(ctx["ema"].module)
    if ctx["rank"] == 0:
        ctx["tb"].close()
        history, config = ctx["history"], ctx["config"]
        summary_extra["top_k_average"] = average_top_k(ctx)
        best = min(history, key=lambda row: row["val_pa_mpjpe_mm"])
        if summary_extra["top_k_average"] and summary_extra["top_k_average"]["used"]:
            best = {"epoch": "average", "val_pa_mpjpe_mm": summary_extra["top_k_average"]["val_pa_mpjpe_mm"]}
        summary = {"arch": config["arch"], "recipe": config["recipe"], "params": ctx["params"],
                   "epochs": len(history), "best_epoch": best["epoch"],
                   "best_val_pa_mpjpe_mm": best["val_pa_mpjpe_mm"],
                   "val_constant_shape_pa_mpjpe_mm": ctx["baseline"],
                   "best_val_fraction_of_constant_shape": best["val_pa_mpjpe_mm"] / ctx["baseline"],
                   "train_images_per_s": float(np.mean(speeds)) if speeds else None,
                   "img_size": config["img_size"], "world_size": ctx["world_size"], **summary_extra}
        with atomic_write(ctx["folder"] / "summary.json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2))
        print(f"done: best validation PA-MPJPE {summary['best_val_pa_mpjpe_mm']:.2f} mm at epoch "
              f"{summary['best_epoch']} = {summary['best_val_fraction_of_constant_shape']:.0%} of the constant-shape "
              f"baseline ({ctx['baseline']:.2f} mm); {ctx['folder'] / 'best.pt'}"
              f"{SHORT_RUN_NOTE if is_short_run(config) else ''}")
    if ctx["world_size"] > 1:
        dist.destroy_process_group()


def print_archs():
    from models.flops import count_gflops
    print(f"{'arch':<16}{'seed':<6}{'params':>10}{'input':>7}{'GFLOPs':>9}  summary")
    for name in models.list_models():
        entry = models.model_entry(name)
        size = recipes.RECIPES.get(name, recipes.DEFAULTS)["img_size"]
        model = models.create_model(name, pretrained="none").eval()
        params = sum(p.numel() for p in model.parameters())
        print(f"{name:<16}{entry.seed:<6}{params / 1e6:>9.2f}M{size:>7}{count_gflops(model, size):>9.2f}  "
              f"{entry.summary}")


if __name__ == "__main__":
    main()
