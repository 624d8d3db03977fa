"""Checkpoints: written to a temp file and ``os.replace``d; they carry the resolved config that rebuilds the model.

A checkpoint is a dict: ``model`` (state dict), ``config`` (the run's resolved config: arch, img_size, model
options, ...), ``epoch`` (epochs completed), ``history`` (one dict per completed epoch, the rows of log.csv),
``stats`` (facts about the training data the predictions need, e.g. the mean bone length and the constant
shape), and, in ``last.pt``, the optimizer, scheduler, scaler and EMA states that ``--resume`` restores (RNG
streams are re-seeded from the seed and the epoch at each epoch's start). A ``last.pt`` written inside an epoch (a
stop signal, ``checkpoint_minutes``) also holds ``position``: ``runstate.EpochPosition.to_dict()``, the place in
that epoch and every process's random streams. ``model`` is the evaluated weights (the EMA when the run keeps one)
in ``best.pt`` and the raw trained weights in ``last.pt``. The weights of the best epochs kept for averaging are in
``topk.pt`` (written at epoch ends only, so a state inside an epoch agrees with it). ``CheckpointSaver`` keeps
best.pt, last.pt and topk.pt of one run.
"""
import copy
import io
import pickle
from pathlib import Path

import numpy as np
import torch

import models
from core import locations
from core.common import UserError, atomic_write

FORMAT_VERSION = 1


def save_checkpoint(state, path):
    """Write ``state`` to ``path`` atomically: a reader sees the old file or the new one, never a partial one."""
    buffer = io.BytesIO()  # serialised in memory, then written by Python: a full disk is an OSError naming the
    torch.save({"format_version": FORMAT_VERSION, **state}, buffer)  # file, not torch's zip-writer RuntimeError
    with atomic_write(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def load_checkpoint(path):
    """Read a checkpoint of this project; a missing, broken or foreign file is a UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; train one with `python train.py --arch NAME` "
                        f"or pass --ckpt PATH")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:  # broken zip/pickle data
        raise UserError(f"checkpoint {path} cannot be read ({type(err).__name__}: {str(err).splitlines()[0]}); "
                        f"it is broken or not a PyTorch file: use another checkpoint") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION or "config" not in state:
        raise UserError(f"{path} is not a checkpoint of this project (no config/format version); "
                        f"pass a best.pt or last.pt written by train.py")
    return state


def build_model(state, expect_arch=None):
    """The model a checkpoint describes, weights loaded, in eval mode on the CPU."""
    config = state["config"]
    if expect_arch is not None and config["arch"] != expect_arch:
        raise UserError(f"the checkpoint holds arch {config['arch']!r}, not {expect_arch!r}; "
                        f"pass --arch {config['arch']} or another checkpoint")
    model = models.create_model(config["arch"], pretrained="none", **config["model"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise UserError(f"the checkpoint's weights do not fit arch {config['arch']!r} "
                        f"({str(err).splitlines()[0]}); it was written by another version of the model") from None
    return model.eval()


def average_state_dicts(states):
    """The element-wise mean of state dicts with the same keys (floating tensors averaged; integer buffers
    such as BN's batch counters taken from the first)."""
    return {key: torch.stack([s[key].float() for s in states]).mean(0).to(value.dtype)
            if value.is_floating_point() else value.clone() for key, value in states[0].items()}


def newest_checkpoint(name="best.pt", runs_root=None, hint="or pass --ckpt PATH"):
    """The most recently written ``RUNS/*/name`` (default: the runs root); a UserError ending in ``hint`` when
    there is none."""
    runs_root = runs_root or locations.root("runs")
    candidates = sorted(Path(runs_root).glob(f"*/{name}"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise UserError(f"no {Path(runs_root)}/*/{name} found; train a model first "
                        f"(`python train.py --arch effb4_1d`) {hint}")
    return candidates[-1]


class CheckpointSaver:
    """best.pt (with val_pred.npz), last.pt and topk.pt of the run in ``folder``, in the manner of timm's
    CheckpointSaver: whether a validation is the best so far is decided here only (``progress.best_mm``), and the
    weights of the ``average_top_k`` best epochs are kept in memory as [(val mm, epoch, weights)], best first, and
    in topk.pt, from which a resumed run takes them up."""

    def __init__(self, folder, config, stats, progress):
        self.folder, self.config, self.stats, self.progress = Path(folder), config, stats, progress
        self.top_k = config["average_top_k"]
        path = self.folder / "topk.pt"
        self.kept = load_checkpoint(path)["entries"] if self.top_k >= 2 and path.is_file() else []

    def improves(self, val_mm, ties_win=True):
        """Whether ``val_mm`` beats the best so far: a later epoch that ties it wins; an average must beat it."""
        return val_mm <= self.progress.best_mm if ties_win else val_mm < self.progress.best_mm

    def save_epoch(self, epoch, val_mm, weights, val_xyz, val_ids):
        """After validating ``epoch``: best.pt and val_pred.npz when it is the best so far, and topk.pt when its
        evaluated ``weights`` enter the top k (last.pt is ``save_last``'s)."""
        if self.improves(val_mm):
            self.progress.best_mm = val_mm
            self.save_best({"model": weights, "config": self.config, "epoch": epoch, "history": self.progress.history,
                            "stats": self.stats, "best_val_pa_mpjpe_mm": val_mm}, val_xyz, val_ids)
        self.keep_top_k(epoch, val_mm, weights)

    def save_last(self, state):
        save_checkpoint(state, self.folder / "last.pt")

    def save_best(self, state, val_xyz, val_ids):
        save_checkpoint(state, self.folder / "best.pt")
        with atomic_write(self.folder / "val_pred.npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, xyz=val_xyz, ids=val_ids, split="val", data_root=str(Path(self.config["data_root"]).resolve()))

    def keep_top_k(self, epoch, val_mm, weights):
        if self.top_k < 2:
            return
        kept = [e for e in self.kept if e[1] < epoch]  # a resumed run repeats the epoch it was killed in
        weights = {key: value.detach().cpu().clone() for key, value in weights.items()}
        self.kept = sorted(kept + [(val_mm, epoch, weights)], key=lambda e: e[0])[:self.top_k]
        if any(e[1] == epoch for e in self.kept):
            save_checkpoint({"entries": self.kept, "config": self.config}, self.folder / "topk.pt")

    def average_top_k(self, model, validate):
        """Validate a copy of ``model`` holding the mean of the kept epochs' weights (``validate(model)`` -> (metrics,
        xyz, ids, ...)); when it beats best.pt, it becomes best.pt. Returns the summary's record of it, or None when
        no epochs are kept."""
        if self.top_k < 2 or not self.kept:
            return None
        averaged = copy.deepcopy(model)
        averaged.load_state_dict(average_state_dicts([e[2] for e in self.kept]))
        result, val_xyz, val_ids, _ = validate(averaged)
        better = self.improves(result["pa_mpjpe_mm"], ties_win=False)
        if better:
            self.progress.best_mm = result["pa_mpjpe_mm"]
            state = load_checkpoint(self.folder / "best.pt")
            self.save_best({**state, "model": averaged.state_dict(), "best_val_pa_mpjpe_mm": self.progress.best_mm,
                            "averaged_epochs": [e[1] for e in self.kept]}, val_xyz, val_ids)
        epochs = sorted(e[1] for e in self.kept)
        return {"epochs": epochs, "val_pa_mpjpe_mm": result["pa_mpjpe_mm"], "used": better}
