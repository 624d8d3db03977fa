"""Predict with rotation test-time augmentation, write submission files, score locally, draw pictures.

    python predict.py [--ckpt PATH] [--data-root DIR] [--split NAME] [--tta N] [--format freihand|mp21]
                      [--joint-order ait|mano|freihand] [--out PREFIX] [--batch-size B] [--device auto|cpu|cuda]
                      [--viz K] [--workers W] [--no-amp]
    python predict.py --check FILE [--joint-order ait|mano|freihand] [--data-root DIR] [--split NAME]

Defaults: the newest runs/*/best.pt; --data-root, else the data root the checkpoint was trained on when it still
holds a dataset, else data.resolve_data_root(); the layout's submission split (FreiHAND 'evaluation', MP21
'test'); --format freihand on the FreiHAND layout, mp21 on MP21; --out submissions/<run>_<split>_tta<N>.
img_size, arch and model options always come from the checkpoint's config.

Files (PREFIX = --out):
  PREFIX.npz           raw predictions for ensemble.py: xyz (N, 21, 3) metres in FreiHAND order, ids (N,) image
                       ids, split; and layout, data_root, arch, ckpt, run_dir, tta, bone_length_m, constant_shape_m
  PREFIX.zip           --format freihand, the Codalab upload: pred.json = [xyz_list, verts_list], N entries each,
                       metres, the split's order (Codalab reads pred.json from any zip name)
  PREFIX/test_preds.json.gz
                       --format mp21, the course upload, named as the course template writes it, one folder per
                       PREFIX: a gzipped JSON list N x 21 x 3 in millimetres, the split's order, joints in
                       --joint-order (default ait: the course template's order, which the course scores slot by slot)
  PREFIX.metrics.json  when the split has labels: both Procrustes variants, each also as a fraction of the
                       constant-shape baseline (one hand for all, see metrics.constant_shape_baseline)
  PREFIX_viz/NNNN.png  --viz K: K images (NNNN the image id) with the 2D skeleton beside a 3D view

Policies
* Mesh: we predict joints, no MANO mesh. verts_list holds, per sample, 778 copies of the centroid of that
  sample's predicted joints: a well-formed file whose joint scores are ours and whose mesh scores are
  meaningless (all vertices sit at one point in front of the camera, never at the camera centre).
* TTA: N rotations about the input's centre (N=1 is the plain prediction), spread over the range the model was
  trained on (--tta-range; evenly over 360 degrees, 0 first, when it rotated by up to 180 or not at all), run a
  few at a time so any N fits in memory; each prediction's u, v is mapped back by the inverse affine, then u, v,
  d are averaged and converted to camera xyz (inference.py).
* Root depth: the depth at which all 20 predicted bones come closest to their expected lengths (one weighted
  least-squares problem, inference.root_depths), scaled by the known bone of *_scale.json where the split has
  it, else by the checkpoint's training mean bone length (stats['bone_length_m']); the lengths are those the model
  draws, measured on its run's validation predictions (val_pred.npz) where that file and the training data are
  there, and the result is then blended with the depth the crop's framing gives (the depth at which a hand of
  that scale fills the input as the validation hands did), by a weight fitted there; the run prints which.
  Where no depth fits the bones better than another (every joint predicted on one camera ray: in practice only
  an untrained model), the framing's depth, else the training mean root depth (stats['root_depth_m']), with a
  warning.
* AMP on CUDA (bf16 where supported, else fp16) and channels_last, as the checkpoint's config says (both on by
  default); --no-amp predicts in fp32. The CPU always runs fp32.
* Files are validated (count, unique ids, shape (N, 21, 3), finite) before anything is written, and each is
  written to a temp file that replaces the target only when complete: an error never leaves a partial file.
* Joint order: --check recognises it from the geometry alone (data.joints.detect_order: the bones of a hand read in
  each known order) and rejects a file whose order is not the one its format expects (.npz and .zip: freihand;
  mp21: --joint-order, default ait). Every writer runs the same check on what it wrote before the temp file replaces
  the target, so no writer leaves a file its check would reject. Wrist depths outside 0.05-5 m (an untrained model
  can put a hand hundreds of metres away) are reported as implausible, not as a unit mistake.
"""
import argparse
from pathlib import Path

import numpy as np
import torch

import geometry
from common import RUNS_ROOT, UserError, check_minimums, cli, resolve_device
from data import resolve_data_root
from data.cache import make_dataset
from data.loader import make_loader
from data.readers import detect_layout, load_split, submission_split
from checkpoints import newest_checkpoint
from inference import (load_model, predict_loader, read_checkpoint, root_depths, training_rotation,
                       validation_calibration)
from pictures import save_pictures
from submission import (MP21_ORDER, check_file, output_prefix, report_scores, resolve_format, shown, write_outputs,
                        written_line)


# --- data and options ------------------------------------------------------------------------------------------

def resolve_root(data_root, config, announce=print):
    """--data-root, else the checkpoint's training data root while it holds a dataset, else the default."""
    if data_root:
        return resolve_data_root(data_root)
    trained_on = config.get("data_root")
    if trained_on and detect_layout(trained_on) is not None:
        return Path(trained_on)
    if trained_on:
        announce(f"the checkpoint's data root {trained_on} holds no dataset now; using the default")
    return resolve_data_root(None, announce)


def root_depth_source(split, stats):
    """One line saying where the root depth comes from."""
    if split.scale is not None:
        return f"root depth: every bone against the known bone scale (*_scale.json of the {split.name} split)"
    return (f"root depth: every bone against the checkpoint's training mean bone length "
            f"({stats['bone_length_m'] * 1000:.2f} mm): the {split.name} split has no *_scale.json")


# --- the command line ----------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="checkpoint (default: the newest runs/*/best.pt)")
    p.add_argument("--data-root", help="dataset folder (default: the checkpoint's, else data/freihand, else the "
                                       "synthetic set)")
    p.add_argument("--split", help="split to predict (default: evaluation on FreiHAND, test on MP21)")
    p.add_argument("--tta", type=int, default=1, help="rotations averaged per image (1 = plain prediction)")
    p.add_argument("--tta-range", type=float, metavar="DEG",
                   help="rotations spread over [-DEG, DEG] (180: the full circle); default: the range the "
                        "checkpoint's training rotated by (the full circle when it did not rotate)")
    p.add_argument("--format", help="upload format: freihand | mp21 (default: the layout's)")
    p.add_argument("--joint-order", help=f"mp21 joint order: {MP21_ORDER} (default, the course template's) | mano | "
                                         f"freihand; with --check, the order the file must hold")
    p.add_argument("--out", help="output prefix (default: submissions/<run>_<split>_tta<N>)")
    p.add_argument("--batch-size", type=int, help="images per forward before TTA (default: the checkpoint's)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--workers", type=int, default=-1, help="data-loading processes (-1: sized to the machine)")
    p.add_argument("--no-cache", action="store_true", help="decode the JPEGs per batch instead of reading the "
                                                           "decoded uint8 cache (data/cache/, built on first use)")
    p.add_argument("--no-amp", action="store_true", help="fp32 on CUDA (default: AMP as the checkpoint trained)")
    p.add_argument("--viz", type=int, default=0, metavar="K", help="save K pictures to PREFIX_viz/")
    p.add_argument("--check", metavar="FILE", help="validate an upload (.zip, .json.gz) or .npz file and exit")
    return p.parse_args(argv)


def check_numbers(args):
    check_minimums(args, {"tta": 1, "batch_size": 1, "viz": 0})
    if args.tta_range is not None and not 0.0 < args.tta_range <= 180.0:
        raise UserError(f"--tta-range {args.tta_range}: must be a number of degrees in (0, 180]")


def predict_split(model, split, config, args, device):
    """Predictions of every image of ``split`` (``predict_loader``'s dict), the model moved to ``device``."""
    cuda = device.type == "cuda"
    channels_last = config.get("channels_last", True)
    amp = cuda and config.get("amp", True) and not args.no_amp
    if cuda:
        torch.backends.cudnn.benchmark = True  # one input size throughout
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    dataset = make_dataset(split, config["img_size"], cache=config.get("cache", True) and not args.no_cache)
    loader = make_loader(dataset, args.batch_size or config["batch_size"],
                         train=False, workers=args.workers, pin_memory=cuda)
    max_deg = args.tta_range if args.tta_range is not None else training_rotation(config)
    spread = "the full circle" if max_deg >= 180.0 else f"+-{max_deg:g} degrees"
    print(f"predicting {len(split)} images on {device} ({'AMP' if amp else 'fp32'}"
          f"{', channels_last' if channels_last else ''}), TTA over {args.tta} rotation{'s' * (args.tta > 1)}"
          + (f" spread over {spread}" if args.tta > 1 else ""))
    return predict_loader(model, loader, device, args.tta, amp, channels_last, desc=f"predict {split.name}",
                          max_deg=max_deg)


@cli
def main(argv=None):
    args = parse_args(argv)
    if args.check:
        print(check_file(args.check, args.data_root, args.split, args.joint_order))
        return
    check_numbers(args)
    ckpt = Path(args.ckpt) if args.ckpt else newest_checkpoint("best.pt", RUNS_ROOT)
    state = read_checkpoint(ckpt)
    model, config, stats = load_model(state, ckpt), state["config"], state["stats"]
    print(f"checkpoint {shown(ckpt)}: {config['arch']}, {config['img_size']} px, epoch {state.get('epoch', '?')}")
    root = resolve_root(args.data_root, config)
    split = load_split(root, args.split or submission_split(detect_layout(root)))
    fmt, joint_order = resolve_format(args.format, args.joint_order, split.layout)
    prefix = output_prefix(args.out, f"{ckpt.resolve().parent.name}_{split.name}_tta{args.tta}")
    calibration, calibration_line = validation_calibration(ckpt.resolve().parent, config, stats)
    print(f"data: the {split.name} split of {shown(root)} ({split.layout} layout)\n"
          f"{root_depth_source(split, stats)}; {calibration_line}")

    predictions = predict_split(model, split, config, args, resolve_device(args.device))
    depth, fell_back = root_depths(predictions, stats, calibration)
    xyz = geometry.uvd_to_xyz(predictions["uvd"], predictions["K"], depth)
    if fell_back.any():
        fallback = ("the depth the crop's framing gives" if calibration
                    else f"the training mean, {stats['root_depth_m']:.3f} m")
        print(f"warning: {fell_back.sum()} of {len(xyz)} predictions put every joint on one camera ray (an untrained "
              f"model?); their root depth is {fallback}")
    record = {"xyz": xyz, "ids": predictions["ids"], "split": split.name, "layout": split.layout,
              "data_root": str(Path(root).resolve()), "arch": config["arch"], "ckpt": str(ckpt.resolve()),
              "run_dir": str(ckpt.resolve().parent), "tta": args.tta, "bone_length_m": stats["bone_length_m"],
              **({"constant_shape_m": np.asarray(stats["constant_shape_m"])} if "constant_shape_m" in stats else {})}
    npz, upload, notes = write_outputs(prefix, record, fmt, joint_order, expected_ids=split.image_ids)
    print(written_line(f"wrote {npz} and the upload file {upload}", fmt, joint_order, notes))
    if split.labelled:
        info = {"split": split.name, "arch": config["arch"], "ckpt": str(ckpt), "tta": args.tta}
        print(f"wrote {report_scores(prefix, xyz, split.xyz, stats.get('constant_shape_m'), info)}")
    if args.viz:
        print(f"wrote {args.viz} pictures to {save_pictures(prefix, split, xyz, args.viz)}/")


if __name__ == "__main__":
    main()
