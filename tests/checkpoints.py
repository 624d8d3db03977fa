"""Checkpoints of untrained models, saved as train.py saves them, for the tests of prediction and export."""
import copy
import math

import torch

import models
from data.readers import load_split
from training import recipes
from training.checkpoints import save_checkpoint
from training.setup import training_stats

IMG_SIZE = 64  # network input of the test checkpoints
# an hourglass_attn small enough to build, export and run in a moment
TINY_HOURGLASS = {"channels": 16, "num_stacks": 1, "hourglass_depth": 2, "stem_stride": 4, "depth_head": "lifting"}


def write_checkpoint(path, arch, data_root, **config_overrides):
    """An untrained ``arch`` saved as train.py would: its recipe's config at IMG_SIZE px, the data's stats."""
    config = copy.deepcopy(recipes.CONFIG_DEFAULTS)
    config.update(copy.deepcopy(recipes.RECIPES.get(arch, {})))
    config.update(arch=arch, recipe=arch, img_size=IMG_SIZE, batch_size=2, pretrained="none",
                  data_root=str(data_root), **config_overrides)
    torch.manual_seed(0)
    model = models.create_model(arch, pretrained="none", **config["model"])
    stats = training_stats(load_split(data_root, "train"))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"model": model.state_dict(), "config": config, "epoch": 0, "history": [], "stats": stats,
                     "best_val_pa_mpjpe_mm": math.inf}, path)
    return path
