"""Where a trained model's error is: its PA-MPJPE over a labelled split, and the same with the truth put in for one
half of the prediction, the 2D pose or the depths (docs/recipes.md reads these figures).

    python tools/error_split.py --ckpt runs/hourglass_attn_64_cpu_s0/best.pt                 # its validation split
    python tools/error_split.py --ckpt runs/X/best.pt --data-root D --split evaluation --split train

Three figures per split, each with its fraction of the constant shape (the training poses' mean shape):
  predicted       the model's joints, as predict.py with --tta 1 makes them;
  true 2D         the true 2D pose with the model's depths; where a lifting network reads the depths from the 2D
                  pose (``models.heads.LiftingHead``), it reads the true pose, so the figure is the lifting's own;
  true depth      the model's 2D pose with the true depths.
Camera joints take the true root depth throughout: the figures compare poses, not the root's placement. No TTA:
the truth put in is the unrotated image's.
"""
import argparse
import contextlib
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.common import UserError, cli  # noqa: E402
from core.geometry import ROOT_JOINT, uvd_to_xyz, xyz_to_uvd  # noqa: E402
from data.dataset import make_dataset  # noqa: E402
from data.loader import make_loader  # noqa: E402
from data.readers import load_split  # noqa: E402
from models.checkpoints import load_model, read_checkpoint  # noqa: E402
from prediction.inference import predict_batch  # noqa: E402
from scoring.metrics import constant_shape_mm, pa_mpjpe  # noqa: E402
from training.step import lifting_network  # noqa: E402

FIGURES = ("predicted", "true 2D", "true depth")


@contextlib.contextmanager
def lifting_reads(lifting, truth):
    """While open, ``lifting`` (a LiftingHead) reads ``truth['uv']`` (B, J, 2) instead of the model's read-out."""
    handle = lifting.register_forward_pre_hook(lambda module, args: (truth["uv"], *args[1:]))
    try:
        yield
    finally:
        handle.remove()


def batch_joints(model, batch, lifting):
    """{figure: camera joints (B, J, 3) metres} for one labelled batch (``FIGURES``)."""
    K, xyz = batch["K"].double(), batch["xyz"].double()
    predicted = predict_batch(model, batch["image"]).double()           # (B, J, 3) model space, as predict.py
    true = xyz_to_uvd(xyz, K)                                           # (B, J, 3)
    if lifting is None:
        true_2d = torch.cat([true[..., :2], predicted[..., 2:]], -1)
    else:
        with lifting_reads(lifting, {"uv": true[..., :2].float()}):
            true_2d = predict_batch(model, batch["image"]).double()
    true_depth = torch.cat([predicted[..., :2], true[..., 2:]], -1)
    root_depth = xyz[:, ROOT_JOINT, 2]
    return {name: uvd_to_xyz(uvd, K, root_depth)
            for name, uvd in zip(FIGURES, (predicted, true_2d, true_depth))}


def split_errors(model, split, img_size, constant_shape_m, batch_size=32):
    """{figure: (PA-MPJPE mm, fraction of the constant shape)} over the labelled ``split``, and its size."""
    if split.xyz is None:
        raise UserError(f"split {split.name} of {split.root} has no labels (*_xyz.json): pass a labelled split")
    lifting = lifting_network(model)
    joints = {name: [] for name in FIGURES}
    for batch in make_loader(make_dataset(split, img_size), batch_size, train=False, workers=0):
        for name, xyz in batch_joints(model, batch, lifting).items():
            joints[name].append(xyz)
    gt = np.asarray(split.xyz, np.float64)
    yardstick = constant_shape_mm(constant_shape_m, gt)
    errors = {name: float(pa_mpjpe(torch.cat(parts).numpy(), gt).mean() * 1000.0) for name, parts in joints.items()}
    return {name: (mm, mm / yardstick) for name, mm in errors.items()}, len(gt)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="a best.pt or last.pt written by train.py")
    p.add_argument("--data-root", help="dataset folder (default: the checkpoint's)")
    p.add_argument("--split", action="append", help="a labelled split, repeatable (default: val)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    state = read_checkpoint(args.ckpt)
    config = state["config"]
    # the splits are read before the model is built: a bad path or split name is refused before any work
    splits = [load_split(args.data_root or config["data_root"], name) for name in args.split or ["val"]]
    model = load_model(state, args.ckpt)
    how = "the depths the lifting network reads from it" if lifting_network(model) else "the predicted depths"
    print(f"{args.ckpt} at {config['img_size']} px, no TTA; true 2D: the true 2D pose with {how}", flush=True)
    for split in splits:
        errors, n = split_errors(model, split, config["img_size"], state["stats"]["constant_shape_m"])
        parts = [f"{figure} {mm:.2f} mm ({fraction:.1%})" for figure, (mm, fraction) in errors.items()]
        print(f"{split.name}, {n} hands: " + " | ".join(parts), flush=True)


if __name__ == "__main__":
    cli(main)()
