"""What a training run records about itself, and the table of all runs.

A run folder gets ``log.csv`` (one row per epoch, rewritten whole so a resumed run never repeats or drops an
epoch), ``curves.png`` (training loss; validation PA-MPJPE against the constant-shape baseline, the line to
beat) and TensorBoard event files (``tensorboard --logdir runs``): every loss term and the lr per logged
optimiser step; validation metrics, images/s and a few validation images with the predicted (red) and true
(green) skeletons per epoch.
"""
import csv
import json
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from core.common import atomic_write
from core.pictures import draw_skeleton

TB_IMAGES = 4          # validation images drawn in TensorBoard each epoch
TB_STEP_EVERY = 10     # optimiser steps between scalar points of the training curves
# The yardstick's names in every file a run writes: constant_shape_mm (the constant shape's PA-MPJPE) and
# fraction_of_constant_shape (a result divided by it), prefixed by split and stage. Older runs spelled them as
# below; their log.csv rows and last.pt histories are read through this one mapping (old key -> new key).
RENAMED_KEYS = {"val_of_constant": "val_fraction_of_constant_shape",
                "val_constant_shape_pa_mpjpe_mm": "val_constant_shape_mm"}


def current_keys(record):
    """A log row or summary (dict) of any age with the current key names (``RENAMED_KEYS``)."""
    return {RENAMED_KEYS.get(key, key): value for key, value in record.items()}


def write_log(folder, history):
    """log.csv from the history rows (dicts), rewritten whole."""
    with atomic_write(Path(folder) / "log.csv") as tmp, open(tmp, "w", newline="") as f:
        fields = list(dict.fromkeys(k for row in history for k in row))
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)


def plot_curves(folder, history, baseline_mm):
    """curves.png: training loss, and validation PA-MPJPE with the constant-shape baseline as a line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [row["train_loss"] for row in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log", title="training loss")
    ax_val.plot(epochs, [row["val_pa_mpjpe_mm"] for row in history], marker="o", color="tab:red", label="model")
    ax_val.axhline(baseline_mm, color="black", linestyle="--", label=f"constant shape {baseline_mm:.2f} mm")
    ax_val.set(xlabel="epoch", ylabel="PA-MPJPE (mm)", title="validation PA-MPJPE")
    ax_val.legend()
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(Path(folder) / "curves.png", dpi=90)
    plt.close(fig)


def skeleton_panel(images, uv_pred, uv_true):
    """(N, H, W, 3) uint8 images with predicted (solid) and true (dashed) skeletons, side by side: (H, N*W, 3)."""
    panels = []
    for image, pred, true in zip(images, uv_pred, uv_true):
        canvas = Image.fromarray(np.ascontiguousarray(image))
        draw = ImageDraw.Draw(canvas)
        draw_skeleton(draw, true, dashed=True)
        draw_skeleton(draw, pred)
        panels.append(np.asarray(canvas))
    return np.concatenate(panels, 1)


class TensorBoardLog:
    """TensorBoard events in the run folder (rank 0 only; a no-op object elsewhere)."""

    def __init__(self, folder, enabled=True, purge_step=None):
        """``purge_step``: a resumed run's first step; events from it on, left by the killed run, are dropped."""
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(log_dir=str(folder), purge_step=purge_step or None)

    def step(self, step, terms, lr):
        """Loss terms (name -> float) and the lr after optimiser step ``step``."""
        if self.writer is None or step % TB_STEP_EVERY:
            return
        for name, value in terms.items():
            self.writer.add_scalar(f"train/loss_{name}", value, step)
        self.writer.add_scalar("train/lr", lr, step)

    def epoch(self, epoch, row, panel=None):
        """The epoch's log row (validation metrics, images/s) and an optional skeleton panel (H, W, 3)."""
        if self.writer is None:
            return
        for key, value in row.items():
            if key.startswith("val_") or key in ("train_images_per_s", "img_size"):  # img_size: the stage's
                self.writer.add_scalar(key.replace("val_", "val/", 1), value, epoch)
        if panel is not None:
            self.writer.add_image("val/skeletons", panel, epoch, dataformats="HWC")
        self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()


def list_runs(runs_root):
    """A pandas table, one row per run folder with a config.json and a log.csv (newest first): name, arch,
    recipe, epochs, best validation mm, its fraction of the constant shape, images/s, date."""
    import pandas as pd
    rows = []
    for folder in sorted(Path(runs_root).glob("*/config.json")):
        folder = folder.parent
        row = run_row(folder)
        if row is not None:
            rows.append(row)
    columns = ["run", "arch", "recipe", "epochs", "best_val_mm", "best_val_fraction_of_constant_shape", "img_per_s",
               "date"]
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values("date", ascending=False, ignore_index=True)


def run_row(folder):
    """One row of ``list_runs`` from a run folder's config.json and log.csv; None when no epoch finished."""
    import pandas as pd
    log = folder / "log.csv"
    if not log.is_file():
        return None
    config = json.loads((folder / "config.json").read_text())
    history = pd.read_csv(log).rename(columns=RENAMED_KEYS)
    best = history["val_pa_mpjpe_mm"].min()
    baseline = history["val_constant_shape_mm"].iloc[0] if "val_constant_shape_mm" in history else float("nan")
    return {"run": folder.name, "arch": config["arch"], "recipe": config["recipe"],
            "epochs": f"{int(history['epoch'].max())}/{config['epochs']}", "best_val_mm": round(best, 2),
            "best_val_fraction_of_constant_shape": round(best / baseline, 3),
            "img_per_s": round(history["train_images_per_s"].mean(), 1),
            "date": datetime.fromtimestamp(log.stat().st_mtime).strftime("%Y-%m-%d %H:%M")}
