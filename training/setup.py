"""Setting a run up: its config and folder (new, resumed, or restarted by torchrun), the data, the training-label
facts every checkpoint carries, and the built parts, restored from last.pt on --resume. ``set_up(args)`` returns
the typed run state (``runstate.RunSetup``, ``RunParts``, ``Progress``)."""
from pathlib import Path

import numpy as np
import torch

import models
from core import geometry
from core import locations, messages, precision
from core.common import UserError, shown
from data import resolve_or_generate_data_root
from data.joints import bone_ratios
from data.pseudo import pseudo_split
from data.readers import load_split
from scoring import metrics
from training import optimization
from training import runlog
from training import stages
from training import time_budget
from training.config import apply_cpu_budget, resolve_config, resume_config
from training.distributed import barrier, broadcast_int, init_distributed
from training.rundir import check_new_run_folder, elastic_restart, run_folder
from training.runstate import EpochPosition, Progress, RunParts, RunSetup, seed_everything
from uploads.provenance import check_made_on, check_plausible_hands
from uploads.records import load_predictions

log = messages.logger(__name__)


def set_up(args):
    """(RunSetup, RunParts, Progress) of the run ``args`` asks for: config, data, model, optimiser, folder; the
    parts' states and the progress restored from last.pt when it resumes."""
    config, folder, resume_state, given = resolve_run(args)
    rank, world_size, device = init_distributed(config["device"])
    chosen = precision.choose(device, config["amp"], config["cpu_bf16"])
    config["precision"] = chosen.name  # recorded in config.json and summary.json
    if rank:
        messages.set_quiet()   # one process speaks for the group; warnings still come from each
    data_root = locate_data(config, rank, world_size)
    if resume_state is None:
        folder = settle_new_run(args, config, given, data_root, device, rank)
    seed_everything(config["seed"])
    splits = load_splits(config, data_root)
    stats = training_stats(splits[0])
    parts, progress = build_parts(config, device, rank, world_size, splits, resume_state, folder)
    setup = RunSetup(config=config, folder=folder, rank=rank, world_size=world_size, device=device, stats=stats,
                     constant_shape_mm=metrics.constant_shape_mm(stats["constant_shape_m"], splits[1].xyz))
    log.info(f"{config['recipe']}: {config['arch']} ({parts.params / 1e6:.2f} M params), {len(parts.inputs.train_set)}"
             f" training / {len(parts.inputs.val_set)} validation images from {shown(data_root)}, "
             f"{stages.describe_sizes(config)}, batch "
             f"{config['batch_size']}{f' x {world_size} processes' if world_size > 1 else ''}, {device} "
             f"({chosen.describe()}), run folder "
             f"{shown(folder)}; the constant-shape baseline (one hand for all) scores {setup.constant_shape_mm:.2f} mm "
             f"PA-MPJPE on validation")
    if resume_state is not None:
        inside = f", at {progress.describe(config['accumulate'])}" if progress.position else ""
        plan = stages.plan(config)
        stage = stages.stage_at(config, min(progress.epoch + 1, config["epochs"]))
        in_stage = f", in {stage.describe(len(plan))}" if len(plan) > 1 else ""
        log.info(f"resuming {folder} after epoch {resume_state['epoch']} of {config['epochs']}{inside}{in_stage}")
    return setup, parts, progress


def limit(split, max_images, seed):
    """A fixed random subset of at most ``max_images`` images (0 = all)."""
    if not max_images or max_images >= len(split):
        return split
    return split.subset(np.sort(np.random.default_rng(seed).choice(len(split), max_images, replace=False)))


def training_stats(split):
    """Facts about the training labels that predictions need later (stored in every checkpoint): the mean bone
    length, each bone's ratio to it (mean and sd over the hands), the constant shape (the yardstick's hand) and the
    mean root depth."""
    bone = split.scale if split.scale is not None else geometry.bone_length(split.xyz)
    hands = split.xyz[np.unique(split.ann_ids, return_index=True)[1]]  # one pose per hand, not per image version
    ratio_mean, ratio_sd = bone_ratios(hands)
    return {"bone_length_m": float(np.mean(bone)),
            "bone_ratio_mean": ratio_mean.tolist(), "bone_ratio_sd": ratio_sd.tolist(),
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


def locate_data(config, rank, world_size):
    """The dataset folder; the synthetic default is generated once, by rank 0, while the others wait."""
    if rank == 0:
        data_root = resolve_or_generate_data_root(config["data_root"] or None)
    barrier(world_size)
    if rank:
        data_root = resolve_or_generate_data_root(config["data_root"] or None)
    return data_root


def settle_new_run(args, config, given, data_root, device, rank):
    """A new run's last config decisions (the CPU budget on the synthetic set, which weights) and its folder,
    checked before any work."""
    synthetic = Path(data_root).resolve() == locations.root("synthetic").resolve()
    if synthetic and device.type == "cpu":
        apply_cpu_budget(config, given)
    if config["pretrained"] == "auto":
        config["pretrained"] = "none" if synthetic else "imagenet"
    config["data_root"] = str(data_root)
    folder = run_folder(args, config)
    if rank == 0:
        check_new_run_folder(folder)
    return folder


def load_splits(config, data_root):
    """(train split, val split, pseudo-labelled split or None): the images and labels the run trains and validates
    on, at any input size (``stages.StageInputs`` makes their datasets)."""
    train_split, val_split = (limit(load_split(data_root, name, config["folds"], config["fold"]), config[key],
                                    config["seed"])
                              for name, key in (("train", "max_train_images"), ("val", "max_val_images")))
    if not train_split.labelled or not val_split.labelled:
        raise UserError(f"{data_root}: the train and val splits need *_xyz.json labels")
    pseudo = pseudo_labelled_split(config, data_root) if config["pseudo_labels"] else None
    return train_split, val_split, pseudo


def pseudo_labelled_split(config, data_root):
    """The pseudo-labelled images of config['pseudo_labels'] that join the training set (data/pseudo.py)."""
    path = config["pseudo_labels"]
    if config.get("pseudo_labels_sha256") and not Path(path).is_file():  # a resumed run's file is gone
        raise UserError(f"--pseudo-labels {path} is gone, and this run trains on that file (sha256 "
                        f"{config['pseudo_labels_sha256'][:12]}): restore it to resume (new predictions would differ "
                        f"from it), or start a new run")
    record = load_predictions(path)
    check_made_on(record, path, data_root, "--pseudo-labels")
    check_plausible_hands(record["xyz"], record["ids"], f"--pseudo-labels {path}")
    split, info = pseudo_split(record, path, data_root, config["pseudo_keep"])
    log.info(f"pseudo-labels: {info['kept']} of {info['images']} images of the {info['split']} split labelled by "
             f"{path} (sha256 {info['sha256'][:12]}), loss weight {config['pseudo_weight']:g}")
    if config.setdefault("pseudo_labels_sha256", info["sha256"]) != info["sha256"]:  # a resumed run's file changed
        raise UserError(f"--pseudo-labels {path} changed since this run began (sha256 {info['sha256'][:12]}, was "
                        f"{config['pseudo_labels_sha256'][:12]}): restore that file, or start a new run")
    return split


def make_model(config, device, channels_last, pretrained="none"):
    """A new model of ``config``'s arch and options on ``device`` (channels_last memory when asked)."""
    model = models.create_model(config["arch"], pretrained=pretrained, **config["model"])
    return model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)


def build_parts(config, device, rank, world_size, splits, resume_state=None, folder=None):
    """(RunParts, Progress): model, optimiser, schedule, EMA, the loaders and augmenters of the stage the run starts
    (or resumes) in, their states and the progress restored from ``resume_state`` (last.pt's) when given, before
    DDP copies rank 0's weights to every process."""
    cuda = device.type == "cuda"
    model = make_model(config, device, config["channels_last"], "none" if resume_state else config["pretrained"])
    optimizer = optimization.make_optimizer(model, config)
    inputs = stages.StageInputs(config, device, rank, world_size, splits)
    first_epoch = min(resume_state["epoch"] + 1, config["epochs"]) if resume_state else 1
    inputs.use(stages.stage_at(config, first_epoch).img_size)
    if resume_state is None and config["budget_minutes"]:
        time_budget.fit_to_budget(config, model, inputs, device)
        # every process times its own copy; all train rank 0's epochs, as one schedule needs
        config["epochs"] = broadcast_int(config["epochs"], device, world_size)
    steps_per_epoch = len(inputs.train_loader) // config["accumulate"]
    if steps_per_epoch < 1:
        raise UserError(f"an epoch of {len(inputs.train_loader)} batches is less than one optimiser step of "
                        f"accumulate={config['accumulate']} batches; lower --set accumulate")
    scaler = precision.choose(device, config["amp"], config["cpu_bf16"]).grad_scaler()
    scheduler = optimization.make_scheduler(optimizer, config, steps_per_epoch)
    ema = optimization.make_ema(model, config)
    parts = RunParts(model=model, wrapped=model, ema=ema, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                     inputs=inputs, steps_per_epoch=steps_per_epoch, params=sum(p.numel() for p in model.parameters()))
    progress = Progress()
    if resume_state is not None:
        restore_parts(parts, resume_state, config)
        progress = restored_progress(resume_state, config, steps_per_epoch, folder)
    if world_size > 1:
        parts.wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    if config["compile"]:
        parts.wrapped = torch.compile(parts.wrapped)
    return parts, progress


def restore_parts(parts, state, config):
    """The weights, EMA, optimiser, schedule and scaler of last.pt's ``state``; a --resume --lr scales the schedule
    on to the new peak."""
    parts.model.load_state_dict(state["model"])
    if parts.ema is not None:
        parts.ema.module.load_state_dict(state["ema"])
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.scheduler.load_state_dict(state["scheduler"])
    saved_lr = state["config"]["lr"]
    if config["lr"] != saved_lr:
        optimization.rescale_lr(parts.optimizer, parts.scheduler, config["lr"] / saved_lr)
    if state["scaler"] and parts.scaler.is_enabled():  # empty from a run without fp16 (another GPU, the CPU)
        parts.scaler.load_state_dict(state["scaler"])


def restored_progress(state, config, steps_per_epoch, folder):
    """The Progress last.pt's ``state`` holds; written inside an epoch, its place there (checked against the
    epoch the training split now makes), from which the trainer continues it."""
    progress = Progress(epoch=state["epoch"], best_mm=state["best_val_pa_mpjpe_mm"], best_epoch=state.get("best_epoch"),
                        history=[runlog.current_keys(row) for row in state["history"]])
    if state.get("position"):
        position = progress.position = EpochPosition.from_dict(state["position"])
        position.lr *= config["lr"] / state["config"]["lr"]
        size = stages.stage_at(config, position.epoch).img_size
        if position.img_size and position.img_size != size:
            raise UserError(f"{folder / 'last.pt'} stopped inside epoch {position.epoch} at {position.img_size} px, "
                            f"and its stages train that epoch at {size} px: start a new run with another --out")
        if position.epoch_batches != steps_per_epoch * config["accumulate"]:
            raise UserError(f"{folder / 'last.pt'} stopped inside an epoch of {position.epoch_batches} "
                            f"batches per process, and the training split now makes "
                            f"{steps_per_epoch * config['accumulate']}: the dataset changed; "
                            f"restore it, or start a new run with another --out")
    return progress
