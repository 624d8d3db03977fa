"""Reading checkpoints, in the model layer as timm keeps it (the saver is ``training.checkpoints``): a checkpoint
carries the resolved config that rebuilds its model.

A checkpoint is a dict: ``model`` (state dict), ``config`` (the run's resolved config: arch, img_size, model
options, ...), ``epoch`` (epochs completed), ``history`` (one dict per completed epoch, the rows of log.csv),
``stats`` (facts about the training data the predictions need, e.g. the mean bone length and the constant
shape), and, in ``last.pt``, the optimizer, scheduler, scaler and EMA states that ``--resume`` restores (RNG
streams are re-seeded from the seed and the epoch at each epoch's start). A ``last.pt`` written inside an epoch (a
stop signal, ``checkpoint_minutes``) also holds ``position``: ``runstate.EpochPosition.to_dict()``, the place in
that epoch and every process's random streams. ``model`` is the evaluated weights (the EMA when the run keeps one)
in ``best.pt`` and the raw trained weights in ``last.pt``. The weights of the best epochs kept for averaging are in
``topk.pt`` (written at epoch ends only, so a state inside an epoch agrees with it). ``img_size``, beside the
config, is the input size the weights were trained at (a run with stages, training/stages.py, changes it).
"""
import pickle
from pathlib import Path

import torch

import models
from core import locations
from core.common import UserError

FORMAT_VERSION = 1


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


def newest_checkpoint(name="best.pt", runs_root=None, hint="or pass --ckpt PATH"):
    """The most recently written ``RUNS/*/name`` (default: the runs root); a UserError ending in ``hint`` when
    there is none."""
    runs_root = runs_root or locations.root("runs")
    candidates = sorted(Path(runs_root).glob(f"*/{name}"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise UserError(f"no {Path(runs_root)}/*/{name} found; train a model first "
                        f"(`python train.py --arch effb4_1d`) {hint}")
    return candidates[-1]


def read_checkpoint(path):
    """``load_checkpoint`` plus what prediction needs: a config naming the model and its input size,
    and the training stats. Every problem is a UserError naming the file."""
    state = load_checkpoint(path)
    missing = [key for key in ("arch", "img_size", "model") if key not in state["config"]]
    missing += [f"stats.{key}" for key in ("bone_length_m", "root_depth_m")
                if key not in state.get("stats", {})]
    if missing:
        raise UserError(f"checkpoint {path} lacks {', '.join(missing)}; pass a best.pt written by train.py")
    # the size its weights were trained and validated at: a run with stages records it beside the run's config
    state["config"] = {**state["config"], "img_size": state.get("img_size") or state["config"]["img_size"]}
    return state


def load_model(state, path):
    """The checkpoint's model, weights loaded, in eval mode on the CPU. A config whose arch or model options do
    not fit the weights (another arch's checkpoint, an edited config.json) is a UserError naming the file."""
    config = state["config"]
    try:
        try:
            models.check_model_options(config["arch"], config["model"])
        except ValueError as err:
            raise UserError(f"model options {config['model']} do not fit arch {config['arch']!r} ({err})") from None
        return build_model(state)
    except UserError as err:
        raise UserError(f"checkpoint {path}: {err}; it holds another arch's weights or an edited config: "
                        f"use the best.pt its run wrote") from None
