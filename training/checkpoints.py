"""Writing checkpoints: temp file then ``os.replace``; ``CheckpointSaver`` keeps best.pt, last.pt and topk.pt of one
run. What a checkpoint holds, and reading one, is ``models.checkpoints``'s."""
import copy
import io
from pathlib import Path

import numpy as np
import torch

from core.common import atomic_write
from models.checkpoints import FORMAT_VERSION, load_checkpoint


def save_checkpoint(state, path):
    """Write ``state`` to ``path`` atomically: a reader sees the old file or the new one, never a partial one."""
    buffer = io.BytesIO()  # serialised in memory, then written by Python: a full disk is an OSError naming the
    torch.save({"format_version": FORMAT_VERSION, **state}, buffer)  # file, not torch's zip-writer RuntimeError
    with atomic_write(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def average_state_dicts(states):
    """The element-wise mean of state dicts with the same keys (floating tensors averaged; integer buffers
    such as BN's batch counters taken from the first)."""
    return {key: torch.stack([s[key].float() for s in states]).mean(0).to(value.dtype)
            if value.is_floating_point() else value.clone() for key, value in states[0].items()}


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

    def save_epoch(self, epoch, stage, val_mm, weights, val_xyz, val_ids):
        """After validating ``epoch`` of ``stage`` (stages.Stage): best.pt and val_pred.npz when it is the best so far
        or the first of a later stage (a new input size starts the race again), and topk.pt when its evaluated
        ``weights`` enter the stage's top k (last.pt is ``save_last``'s)."""
        if self.improves(val_mm) or (stage.index > 0 and epoch == stage.first_epoch):
            self.progress.best_mm, self.progress.best_epoch = val_mm, epoch
            self.save_best({"model": weights, "config": self.config, "epoch": epoch, "history": self.progress.history,
                            "stats": self.stats, "best_val_pa_mpjpe_mm": val_mm, "img_size": stage.img_size},
                           val_xyz, val_ids)
        self.keep_top_k(epoch, val_mm, weights, stage.first_epoch)

    def save_last(self, state):
        save_checkpoint(state, self.folder / "last.pt")

    def save_best(self, state, val_xyz, val_ids):
        save_checkpoint(state, self.folder / "best.pt")
        with atomic_write(self.folder / "val_pred.npz") as tmp, open(tmp, "wb") as f:
            np.savez(f, xyz=val_xyz, ids=val_ids, split="val", data_root=str(Path(self.config["data_root"]).resolve()))

    def keep_top_k(self, epoch, val_mm, weights, first_epoch=1):
        """Keep ``weights`` when they enter the top k of the epochs since ``first_epoch`` (their stage's first)."""
        if self.top_k < 2:
            return
        # a resumed run repeats the epoch it was killed in; an earlier stage's weights are of another input size
        kept = [e for e in self.kept if first_epoch <= e[1] < epoch]
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
            self.progress.best_mm, self.progress.best_epoch = result["pa_mpjpe_mm"], "average"
            state = load_checkpoint(self.folder / "best.pt")
            self.save_best({**state, "model": averaged.state_dict(), "best_val_pa_mpjpe_mm": self.progress.best_mm,
                            "averaged_epochs": [e[1] for e in self.kept]}, val_xyz, val_ids)
        epochs = sorted(e[1] for e in self.kept)
        return {"epochs": epochs, "val_pa_mpjpe_mm": result["pa_mpjpe_mm"], "used": better}
