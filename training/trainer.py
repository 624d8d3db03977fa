"""The epoch loop: train, validate, save, and the summary at the end. ``run(args)`` sets a run up, locks its folder
and trains; ``Trainer`` holds the typed run state (``runstate``) and the things of one session (the checkpoint
saver, TensorBoard, the stop signals). Inside the epochs SIGINT and SIGTERM stop the run after the step in progress,
with a last.pt that continues it exactly."""
import contextlib
import shutil
import time

import numpy as np
import torch
import torch.distributed as dist

from core.common import (EXIT_INTERRUPTED, EXIT_TERMINATED, Interrupted, Terminated, UserError, atomic_write,
                         shown)
from core.common import progress as progress_bar  # ``progress`` in training/ is the run state (runstate.Progress)
from core.json_files import json_text
from core.messages import logger
from data.loader import to_device
from prediction.inference import camera_joints, predict_loader
from scoring import metrics
from training import runlog
from training import runstate
from training import stages
from training import time_budget
from training.checkpoints import CheckpointSaver
from training.config import SHORT_RUN_NOTE, is_short_run
from training.distributed import barrier, broadcast_int, ranks_hold_same_weights
from training.rundir import claim_run_folder, last_pt_holds, resume_hint
from training.setup import set_up
from training.step import forward_loss, optimizer_step

log = logger(__name__)


def run(args):
    """Set up the run ``args`` asks for, lock its folder (rank 0) and train. A new folder that ends without a
    last.pt is removed; a stop outside the epochs' handling is one line with the command that continues."""
    setup, parts, progress = set_up(args)
    folder = setup.folder
    new_folder = not folder.exists()
    lock = claim_run_folder(folder) if setup.rank == 0 else None  # held until the process ends
    try:
        Trainer(setup, parts, progress).train()
    except BaseException as err:
        if setup.rank == 0 and new_folder and not (folder / "last.pt").exists():
            lock.close()
            shutil.rmtree(folder, ignore_errors=True)  # nothing worth keeping: leave no half-made run behind
        if isinstance(err, KeyboardInterrupt):  # a second signal, or one outside the epochs: rank 0 says it
            line = f"training stopped; {resume_hint(folder, setup.world_size)}" if setup.rank == 0 else ""
            raise Interrupted(line, status=EXIT_TERMINATED if isinstance(err, Terminated) else EXIT_INTERRUPTED) \
                from None
        raise
    finally:
        parts.inputs.close()  # the loaders' workers ignore stop signals: end them before the interpreter exits
        if lock is not None:
            lock.close()  # the folder is free again (also when run inside another program, such as a test)


class Trainer:
    """Trains ``parts`` from ``progress`` on: every epoch trains, validates and (rank 0) saves."""

    def __init__(self, setup, parts, progress):
        self.setup, self.parts, self.progress = setup, parts, progress
        self.config = setup.config
        self.saver = CheckpointSaver(setup.folder, self.config, setup.stats, progress) if setup.rank == 0 else None
        self.last_pt = progress.describe(self.config["accumulate"])  # what last.pt holds, in words (None: nothing)
        self.last_saved = time.monotonic()
        self.tb = self.signals = None

    # --- the loop ---------------------------------------------------------------------------------------------

    def train(self):
        """config.json, then every epoch: train, validate, save; then the summary."""
        setup, config, position = self.setup, self.config, self.progress.position
        if setup.rank == 0:
            self.write_config()
        self.tb = runlog.TensorBoardLog(setup.folder, enabled=setup.rank == 0, purge_step=self.progress.epoch *
                                        self.parts.steps_per_epoch + (position.batches // config["accumulate"]
                                                                      if position else 0))
        self.last_saved = time.monotonic()
        speeds = [row["train_images_per_s"] for row in self.progress.history]
        with runstate.StopSignals() as signals:
            self.signals = signals
            epoch = self.progress.epoch + 1
            while epoch <= config["epochs"]:  # a time budget may change the epochs after the first (replan)
                stage = self.enter_stage(epoch)
                loss, terms, speed, lr, seconds = self.train_one_epoch(epoch)
                speeds.append(speed)
                if setup.rank == 0:
                    self.end_epoch(epoch, stage, {"lr": lr, "train_loss": loss, **{f"loss_{k}": v for k, v in
                                                                                  terms.items()},
                                                  "train_images_per_s": speed}, seconds)
                if config["budget_minutes"]:
                    config["epochs"] = broadcast_int(config["epochs"], setup.device, setup.world_size)
                self.progress.epoch = epoch
                barrier(setup.world_size)
                signum, _ = runstate.agree(signals, setup.world_size, setup.device)
                if signum:  # arrived during validation or the save: last.pt holds this epoch
                    self.stop(signum, epoch)
                if config["budget_minutes"] and self.deadline_reached(epoch):
                    break
                epoch += 1
        self.finish(speeds)

    def deadline_reached(self, epoch):
        """Whether the next epoch would end past the time budget (rank 0 decides for all); says so when it would."""
        ending = int(self.setup.rank == 0 and time_budget.past_deadline(self.config, self.progress.history))
        if not broadcast_int(ending, self.setup.device, self.setup.world_size):
            return False
        share = time_budget.epochs_share_seconds(self.config) / 60
        log.info(f"time budget: the next epoch would end past {share:.3g} of the {self.config['budget_minutes']:g} "
                 f"min (the rest starts and ends the run); ending after epoch {epoch} of {self.config['epochs']} (the "
                 f"rest, past the budget: python train.py --out {self.setup.folder} --resume --budget-minutes 0)")
        return True

    def write_config(self):
        with atomic_write(self.setup.folder / "config.json") as tmp:
            tmp.write_text(json_text(self.config, indent=2))

    def enter_stage(self, epoch):
        """The Stage of ``epoch``; its inputs (loaders, augmenters at its size) made current, said when new."""
        stage, count = stages.stage_at(self.config, epoch), len(stages.plan(self.config))
        # a re-plan inside the last stage keeps its first epoch; config.json says where the stages begin
        if stage.index == count - 1 and time_budget.fix_stages(self.config) and self.setup.rank == 0:
            self.write_config()
        if self.parts.inputs.use(stage.img_size):
            log.info(f"{stage.describe(count)}, from its own decoded images; best.pt and the averaged epochs come "
                     f"from {'this stage' if stage.index == count - 1 else 'the last stage'}")
        return stage

    def train_one_epoch(self, epoch):
        """Returns (mean loss, mean loss terms, training images per second, lr at the epoch's first step, seconds
        of training, a resumed epoch's earlier part included). Each
        optimiser step sums the gradients of ``accumulate`` batches, then steps the lr schedule and the EMA; after
        each the run may save its place in the epoch or stop (``pause_point``)."""
        setup, config, accumulate = self.setup, self.config, self.config["accumulate"]
        self.parts.wrapped.train()
        position, generator = self.begin_epoch(epoch)
        final = epoch > config["epochs"] - config["final_epochs"]
        inputs = self.parts.inputs
        augmenter = inputs.augmenter_final if final else inputs.augmenter
        total = position.epoch_batches
        bar = progress_bar(inputs.train_loader, desc=f"epoch {epoch}/{config['epochs']}", total=total,
                       initial=position.batches, enabled=setup.rank == 0)
        window, start = [], time.perf_counter() - position.seconds
        for micro, batch in enumerate(bar, start=position.batches):
            if micro == total:
                break  # the remainder that would not fill an optimiser step
            batch = augmenter(to_device(batch, setup.device), generator=generator)
            loss, terms = self.train_batch(batch, epoch, micro)
            position.add({"total": loss, **terms}, batch["image"].shape[0] * setup.world_size)
            window.append(loss.detach())
            if len(window) == 10 or micro == total - 1:
                self.check_finite(torch.stack(window), epoch, micro)
                bar.set_postfix(loss=f"{torch.stack(window).mean().item():.4f}",
                                img_s=f"{position.images / (time.perf_counter() - start):.0f}", refresh=False)
                window = []
            if (micro + 1) % accumulate == 0:
                position.batches, position.seconds = micro + 1, time.perf_counter() - start
                window = self.pause_point(position, generator, window)
        bar.close()
        terms = {k: float(v) / position.count for k, v in position.totals.items()}
        seconds = time.perf_counter() - start
        return terms.pop("total"), terms, position.images / seconds, position.lr, seconds

    def begin_epoch(self, epoch):
        """Seed the epoch's random streams from (seed, epoch) and set its shuffle; when the run resumes inside this
        epoch, restore the streams and skip the batches done. Returns (EpochPosition, augmentation generator)."""
        setup, config = self.setup, self.config
        runstate.seed_everything(config["seed"] * 1000 + epoch)
        generator = torch.Generator(device=setup.device).manual_seed(config["seed"] * 100003 + epoch)
        position, self.progress.position = self.progress.position, None
        if position is None:
            position = runstate.EpochPosition(epoch, self.parts.steps_per_epoch * config["accumulate"],
                                              self.parts.optimizer.param_groups[0]["lr"], setup.world_size,
                                              img_size=self.parts.inputs.size)
        elif not runstate.restore_streams(position.streams[setup.rank], setup.device, generator) and setup.rank == 0:
            log.warning(f"last.pt was written on {position.streams[0]['device']}: on {setup.device.type} the rest "
                        f"of epoch {epoch} draws other augmentations and dropout than the run would have drawn there")
        self.parts.inputs.train_loader.sampler.set_epoch(epoch, skip=position.batches * config["batch_size"])
        return position, generator

    def train_batch(self, batch, epoch, micro):
        """Forward and backward of one augmented batch, and on the last batch of an optimiser step the step itself.
        Returns (loss, unweighted loss terms)."""
        parts, config, steps_per_epoch = self.parts, self.config, self.parts.steps_per_epoch
        accumulate = config["accumulate"]
        step = (epoch - 1) * steps_per_epoch + micro // accumulate  # optimiser steps before this one
        last_micro = (micro + 1) % accumulate == 0
        # DDP decides in the forward whether the backward all-reduces: both under no_sync but on the last batch
        syncing = self.setup.world_size == 1 or last_micro
        with contextlib.nullcontext() if syncing else parts.wrapped.no_sync():
            loss, terms = forward_loss(parts.wrapped, batch, config, self.setup.device, config["channels_last"],
                                            step / (steps_per_epoch * config["epochs"]))
            parts.scaler.scale(loss / accumulate).backward()
        if last_micro:
            lr_used = parts.optimizer.param_groups[0]["lr"]
            optimizer_step(parts.model, parts.optimizer, parts.scaler, config["grad_clip"], parts.scheduler,
                           parts.ema, step + 1)
            self.tb.step(step + 1, {"total": loss.detach(), **terms}, lr_used)
        return loss, terms

    # --- saving inside an epoch, stopping -------------------------------------------------------------------

    def pause_point(self, position, generator, window):
        """After an optimiser step: when a stop signal arrived (on any process) or ``checkpoint_minutes`` passed
        since last.pt was written, check the losses not yet checked (last.pt never keeps a NaN loss's weights),
        write last.pt with the place in the epoch, and stop for a signal. Returns the losses still to check."""
        setup, minutes = self.setup, self.config["checkpoint_minutes"]
        due = setup.rank == 0 and minutes > 0 and time.monotonic() - self.last_saved >= minutes * 60
        signum, save = runstate.agree(self.signals, setup.world_size, setup.device, due)
        if not (signum or save):
            return window
        if window:
            self.check_finite(torch.stack(window), position.epoch, position.batches - 1)
        self.save_position(position, generator)
        if signum:
            self.stop(signum, position.epoch - 1, position)
        return []

    def save_position(self, position, generator):
        """last.pt inside an epoch: what it holds after an epoch, plus the place in this one and every process's
        random streams; rank 0 writes it while the others wait."""
        setup = self.setup
        position.streams = runstate.gather_streams(runstate.random_streams(setup.device, generator), setup.world_size)
        if setup.rank == 0:
            self.saver.save_last({**self.last_state(position.epoch - 1), "position": position.to_dict()})
        barrier(setup.world_size)
        self.last_saved, self.last_pt = time.monotonic(), position.describe(self.config["accumulate"])

    def last_state(self, epochs_done):
        """What last.pt holds after ``epochs_done`` epochs: the raw weights, EMA, optimiser, schedule and scaler, the
        config, the log's rows and the training stats (save_position adds the place inside the next epoch)."""
        parts, progress = self.parts, self.progress
        return {"model": parts.model.state_dict(), "config": self.config, "epoch": epochs_done,
                "img_size": parts.inputs.size,  # the size these weights train at now (predict.py reads it)
                "history": progress.history, "stats": self.setup.stats, "best_val_pa_mpjpe_mm": progress.best_mm,
                "best_epoch": progress.best_epoch,
                "ema": parts.ema.module.state_dict() if parts.ema is not None else None,
                "optimizer": parts.optimizer.state_dict(), "scheduler": parts.scheduler.state_dict(),
                "scaler": parts.scaler.state_dict()}

    def stop(self, signum, epochs_done, position=None):
        """End the run after SIGINT or SIGTERM, last.pt written: one line (rank 0's) saying what last.pt holds and
        the command that continues, and the exit status of that signal (130, 143)."""
        self.tb.close()
        line = ""
        if self.setup.rank == 0:
            holds = last_pt_holds(self.setup.folder / "last.pt", epochs_done, self.config, self.setup.world_size,
                                  position)
            line = f"stopped by {runstate.SIGNAL_NAMES[signum]}; {holds}"
        raise Interrupted(line, status=runstate.exit_status(signum))

    def check_finite(self, losses, epoch, step):
        if not torch.isfinite(losses).all():
            folder, lr = self.setup.folder, self.config["lr"]
            if self.last_pt is not None:  # what the last write of last.pt held: every write follows a loss check
                advice = (f"{folder / 'last.pt'} keeps {self.last_pt}; continue it with a lower lr and clipping: "
                          f"python train.py --out {folder} --resume --lr {lr / 3:.3g} --set grad_clip=1.0")
            else:
                advice = (f"no epoch had finished, so nothing was kept; run the same command again with --lr "
                          f"{lr / 3:.3g} --set grad_clip=1.0 added")
            raise UserError(f"the loss became {losses[~torch.isfinite(losses)][0].item()} at epoch {epoch}, step "
                            f"{step}: training stopped; {advice}")

    # --- validation and the epoch's end (rank 0) ----------------------------------------------------------------

    def validate(self, model):
        """Plain (no TTA) prediction of the validation split by ``model``: (metrics dict, xyz (N, 21, 3) metres,
        ids (N,), predicted uv (TB_IMAGES, 21, 2) of the first images)."""
        config = self.config
        predictions = predict_loader(model, self.parts.inputs.val_loader, self.setup.device, tta=1, amp=config["amp"],
                                     channels_last=config["channels_last"], desc="validate")
        xyz = camera_joints(predictions, self.setup.stats)
        result = metrics.evaluate(xyz, predictions["xyz"])
        return result, xyz, predictions["ids"], predictions["uvd"][:runlog.TB_IMAGES, :, :2]

    def skeleton_panel(self, uv_pred):
        """The first validation images with their predicted and true skeletons, for TensorBoard."""
        samples = [self.parts.inputs.val_set[i] for i in range(len(uv_pred))]
        images = np.stack([s["image"].permute(1, 2, 0).numpy() for s in samples])
        return runlog.skeleton_panel(images, uv_pred, np.stack([s["uvd"][:, :2].numpy() for s in samples]))

    def end_epoch(self, epoch, stage, row, train_seconds):
        """Validate, add the epoch's row to the history, follow a time budget (``time_budget.replan``), save
        (best.pt, last.pt with the epochs the run now trains, the log), print the epoch's line."""
        started = time.perf_counter()
        result, val_xyz, val_ids, uv_pred = self.validate(self.parts.evaluated)
        baseline, history = self.setup.constant_shape_mm, self.progress.history
        history.append({"epoch": epoch, "lr": row.pop("lr"), "train_loss": row.pop("train_loss"),
                        **{k: v for k, v in row.items() if k.startswith("loss_")},
                        "val_pa_mpjpe_mm": result["pa_mpjpe_mm"],
                        "val_fraction_of_constant_shape": result["pa_mpjpe_mm"] / baseline,
                        "val_constant_shape_mm": baseline, "val_auc": result["auc_0_50mm"],
                        "val_mpjpe_mm": result["mpjpe_mm"], "train_images_per_s": row["train_images_per_s"],
                        "epoch_seconds": train_seconds + time.perf_counter() - started, "stage": stage.index + 1,
                        "img_size": stage.img_size})
        if time_budget.replan(self.config, history):
            self.write_config()
        self.save_epoch(epoch, stage, result, val_xyz, val_ids)
        self.tb.epoch(epoch, history[-1], self.skeleton_panel(uv_pred))
        log.info(f"epoch {epoch}/{self.config['epochs']}  loss {history[-1]['train_loss']:.4f}  val PA-MPJPE "
                 f"{result['pa_mpjpe_mm']:.2f} mm = {result['pa_mpjpe_mm'] / baseline:.0%} of the "
                 f"constant shape  AUC {result['auc_0_50mm']:.3f}  {row['train_images_per_s']:.0f} img/s")

    def save_epoch(self, epoch, stage, result, val_xyz, val_ids):
        """best.pt (when validation improved, or the stage is new), val_pred.npz and topk.pt, then last.pt, then
        log.csv and curves.png."""
        self.saver.save_epoch(epoch, stage, result["pa_mpjpe_mm"], self.parts.evaluated.state_dict(), val_xyz,
                              val_ids)
        self.saver.save_last(self.last_state(epoch))
        self.last_saved, self.last_pt = time.monotonic(), f"epoch {epoch}"
        runlog.write_log(self.setup.folder, self.progress.history)
        runlog.plot_curves(self.setup.folder, self.progress.history, self.setup.constant_shape_mm)

    # --- the end -------------------------------------------------------------------------------------------------

    def finish(self, speeds):
        """Compare the processes' weights (DDP), average the top-k epochs and write summary.json (rank 0)."""
        setup, parts = self.setup, self.parts
        summary_extra = {}
        if setup.world_size > 1:
            summary_extra["ranks_hold_same_weights"] = ranks_hold_same_weights(parts.model)
            if parts.ema is not None:
                summary_extra["ranks_hold_same_ema"] = ranks_hold_same_weights(parts.ema.module)
        if setup.rank == 0:
            self.tb.close()
            summary_extra["top_k_average"] = self.average_top_k()
            self.write_summary(speeds, summary_extra)
        if setup.world_size > 1:
            dist.destroy_process_group()

    def average_top_k(self):
        """The kept best epochs' mean weights, validated; best.pt when better. The summary's record, or None."""
        record = self.saver.average_top_k(self.parts.evaluated, self.validate)
        if record is not None:
            log.info(f"average of the {len(record['epochs'])} best epochs {record['epochs']}: validation "
                     f"{record['val_pa_mpjpe_mm']:.2f} mm{' (now best.pt)' if record['used'] else ' (best.pt kept)'}")
        return record

    def stage_records(self):
        """Per stage: its epochs, input size, best validation and mean training speed (summary.json)."""
        records = []
        for stage in stages.plan(self.config):
            rows = [row for row in self.progress.history if stage.first_epoch <= row["epoch"] <= stage.last_epoch]
            records.append({"stage": stage.index + 1, "epochs": [stage.first_epoch, stage.last_epoch],
                            "img_size": stage.img_size,
                            "best_val_pa_mpjpe_mm": min((row["val_pa_mpjpe_mm"] for row in rows), default=None),
                            "train_images_per_s": float(np.mean([row["train_images_per_s"] for row in rows]))
                            if rows else None})
        return records

    def write_summary(self, speeds, extra):
        setup, config, progress = self.setup, self.config, self.progress
        baseline = setup.constant_shape_mm
        # best.pt's, as the saver chose it (the last stage's epochs alone, or their top-k average)
        summary = {"arch": config["arch"], "recipe": config["recipe"], "params": self.parts.params,
                   "epochs": len(progress.history), "best_epoch": progress.best_epoch,
                   "best_val_pa_mpjpe_mm": progress.best_mm,
                   "val_constant_shape_mm": baseline,
                   "best_val_fraction_of_constant_shape": progress.best_mm / baseline,
                   "train_images_per_s": float(np.mean(speeds)) if speeds else None,
                   "train_minutes": sum(row["epoch_seconds"] for row in progress.history) / 60
                   if all("epoch_seconds" in row for row in progress.history) else None,
                   "budget_minutes": config["budget_minutes"],
                   "img_size": stages.final_size(config), "stages": self.stage_records(),
                   "world_size": setup.world_size,
                   "precision": config.get("precision"), **extra}
        with atomic_write(setup.folder / "summary.json") as tmp:
            tmp.write_text(json_text(summary, indent=2))
        log.info(f"done: best validation PA-MPJPE {summary['best_val_pa_mpjpe_mm']:.2f} mm at epoch "
                 f"{summary['best_epoch']} = {summary['best_val_fraction_of_constant_shape']:.0%} of the "
                 f"constant-shape baseline ({baseline:.2f} mm); {shown(setup.folder / 'best.pt')}"
                 f"{SHORT_RUN_NOTE if is_short_run(config) else ''}")
