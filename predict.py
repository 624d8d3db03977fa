"""Predict with rotation test-time augmentation, write submission files, score locally, draw pictures.

    python predict.py [--ckpt PATH] [--data-root DIR] [--split NAME] [--tta N] [--format freihand|mp21]
                      [--joint-order ait|mano|freihand] [--out PREFIX] [--batch-size B] [--device auto|cpu|cuda]
                      [--viz K] [--workers W] [--no-amp]
    python predict.py --check FILE [--joint-order ait|mano|freihand] [--data-root DIR] [--split NAME]
    python predict.py --export onnx [--ckpt PATH]          # best.onnx beside best.pt, kept if it agrees with PyTorch
    python predict.py --backend onnxruntime [...]          # the same prediction and files, the network in onnxruntime
    python predict.py --images DIR|FILE... [--focal PX | --camera K.json] [--hand left] [--tta N] [--viz K]

Defaults: the newest runs/*/best.pt; --data-root, else the data root the checkpoint was trained on when it still
holds a dataset, else data.resolve_or_generate_data_root() (the synthetic set, made on first use); the layout's
submission split (FreiHAND 'evaluation', MP21 'test'); --format freihand on the FreiHAND layout, mp21 on MP21;
--out submissions/<run>_<split>_tta<N>. --check only reads: it never makes a dataset.
Arch and model options always come from the checkpoint's config, the input size from the checkpoint (the last
training stage's size, training/stages.py).

Files (PREFIX = --out):
  PREFIX.npz           raw predictions for ensemble.py: xyz (N, 21, 3) metres in FreiHAND order, ids (N,) image
                       ids, split; and layout, data_root, arch, ckpt, run_dir, tta, bone_length_m, constant_shape_m
  PREFIX.zip           --format freihand, the Codalab upload: pred.json = [xyz_list, verts_list], N entries each,
                       metres, the split's order (Codalab reads pred.json from any zip name)
  PREFIX/test_preds.json.gz
                       --format mp21, the course upload, named as the course template writes it, one folder per
                       PREFIX: a gzipped JSON list N x 21 x 3 in millimetres, the split's order, joints in
                       --joint-order (default ait: the course template's order, which the course scores slot by slot)
  PREFIX.metrics.json  when the split has labels: both Procrustes variants, each with the constant shape's PA-MPJPE
                       (constant_shape_mm: one hand for all, see metrics.constant_shape_mm) and the fraction of it
                       (fraction_of_constant_shape)
  PREFIX_viz/NNNN.png  --viz K: K images (NNNN the image id) with the 2D skeleton beside a 3D view
  --images: PREFIX.json and PREFIX.npz (own_images.write_joints): per picture the 2D joints in its own pixels, the
  root-relative 3D joints in metres, and with --focal or --camera the camera-space joints (default PREFIX:
  submissions/<run>_<folder>_<hand>_tta<N>)
  --export onnx: CKPT.onnx beside the checkpoint (onnx_backend.py), kept only when onnxruntime's joints on the
  split's first images agree with PyTorch's within 0.01 px (u, v) and 0.1 mm (depth)

Policies
* Mesh: we predict joints, no MANO mesh. verts_list holds, per sample, 778 copies of the centroid of that
  sample's predicted joints: a well-formed file whose joint scores are ours and whose mesh scores are
  meaningless (all vertices sit at one point in front of the camera, never at the camera centre).
* TTA: N rotations about the input's centre (N=1 is the plain prediction), spread over the range the model was
  trained on (--tta-range; evenly over 360 degrees, 0 first, when it rotated by up to 180 or not at all), run a
  few at a time so any N fits in memory; each prediction's u, v is mapped back by the inverse affine, then u, v,
  d are averaged and converted to camera xyz (inference.py).
* Root depth: fitted to all 20 predicted bones and calibrated on the run's val_pred.npz (inference.root_depths);
  why and how: docs/conventions.md, "Root depth". The run prints which depth it used.
* AMP on CUDA (bf16 on GPUs with native bf16, else fp16: core.precision) and channels_last, as the checkpoint's
  config says (both on by default); --no-amp predicts in fp32. The CPU always runs fp32.
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

from core import geometry
from core import locations, messages, precision
from core.common import UserError, check_minimums, cli, shown
from core.device import resolve_device
from core.pictures import save_pictures
from data import resolve_or_generate_data_root
from data.dataset import make_dataset
from data.loader import make_loader
from data.readers import detect_layout, load_split, submission_split
from models.checkpoints import load_model, newest_checkpoint, read_checkpoint
from prediction.inference import (predict_batch, predict_loader, root_depths, training_rotation,
                                  validation_calibration)
from prediction.onnx_backend import (PARITY_IMAGES, TOLERANCE_DEPTH_MM, TOLERANCE_UV_PX, export_with_parity,
                                     input_images, load_onnx)
from prediction.own_images import (DEFAULT_FOCAL_PER_SIDE, centred_cameras, list_pictures, picture_sizes,
                                   pictures_split, read_cameras, write_joints)
from scoring.report import report_scores
from uploads.check import check_file
from uploads.kinds import MP21_ORDER
from uploads.naming import output_prefix, resolve_format
from uploads.writing import write_outputs, written_line

log = messages.logger(__name__)

BACKENDS = ("torch", "onnxruntime")


# --- data and options ------------------------------------------------------------------------------------------

def resolve_root(data_root, config):
    """--data-root, else the checkpoint's training data root while it holds a dataset, else the default."""
    if data_root:
        return resolve_or_generate_data_root(data_root)
    trained_on = config.get("data_root")
    if trained_on and detect_layout(trained_on) is not None:
        return Path(trained_on)
    if trained_on:
        log.info(f"the checkpoint's data root {trained_on} holds no dataset now; using the default")
    return resolve_or_generate_data_root(None)


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
    p.add_argument("--backend", default="torch", choices=BACKENDS,
                   help="torch, or onnxruntime on the CPU (the file --export onnx wrote beside the checkpoint)")
    p.add_argument("--export", choices=("onnx",), help="write the checkpoint's network as ONNX beside it (best.pt "
                                                       "-> best.onnx), kept only if onnxruntime's joints on the "
                                                       "split's images agree with PyTorch's, and exit")
    p.add_argument("--images", nargs="+", metavar="PATH",
                   help="predict one's own pictures instead of a split: folders of JPEG/PNG files and/or files, "
                        "one hand per picture; writes PREFIX.json and PREFIX.npz")
    p.add_argument("--focal", type=float, metavar="PX", help="with --images: the focal length in the pictures' "
                                                             "pixels (principal point at the centre)")
    p.add_argument("--camera", metavar="K.json", help="with --images: a JSON 3x3 camera matrix, or a list of one "
                                                      "per picture")
    p.add_argument("--hand", default="right", choices=("right", "left"),
                   help="with --images: left mirrors each picture, predicts a right hand and mirrors the joints "
                        "back")
    locations.add_flags(p, "runs", "submissions", "cache", "synthetic")
    messages.add_quiet_flag(p)
    return p.parse_args(argv)


def check_numbers(args):
    check_minimums(args, {"tta": 1, "batch_size": 1, "viz": 0})
    if args.tta_range is not None and not 0.0 < args.tta_range <= 180.0:
        raise UserError(f"--tta-range {args.tta_range}: must be a number of degrees in (0, 180]")
    if args.focal is not None and not args.focal > 0:
        raise UserError(f"--focal {args.focal}: must be a positive number of pixels")
    picture_only = [name for name, given in (("--focal", args.focal is not None), ("--camera", args.camera),
                                             ("--hand left", args.hand == "left")) if given]
    if picture_only and not args.images:
        raise UserError(f"{', '.join(picture_only)}: only read with --images")
    if args.focal is not None and args.camera:
        raise UserError("--focal and --camera both give the camera: pass one")
    if args.backend == "onnxruntime" and args.device not in ("auto", "cpu"):
        raise UserError(f"--backend onnxruntime runs on the CPU; drop --device {args.device} or use --backend torch")
    if args.tta_range is not None and args.tta == 1:
        raise UserError(f"--tta-range {args.tta_range:g} spreads the rotations of --tta N (N > 1); give --tta N or "
                        f"drop --tta-range")
    if args.images and args.split:
        raise UserError(f"--split {args.split} names a dataset's split; --images predicts the pictures given: drop "
                        f"one of them")
    if args.export and args.backend != "torch":
        raise UserError("--export onnx writes the file from the PyTorch checkpoint; drop --backend")


def predict_split(model, split, config, args, device, mirror=False):
    """Predictions of every image of ``split`` (``predict_loader``'s dict), the model moved to ``device``
    (an onnxruntime model runs where it is)."""
    cuda = device.type == "cuda"
    channels_last = config.get("channels_last", True) and isinstance(model, torch.nn.Module)
    amp = cuda and config.get("amp", True) and not args.no_amp
    if cuda:
        torch.backends.cudnn.benchmark = True  # one input size throughout
    if isinstance(model, torch.nn.Module):
        model = model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    cache = config.get("cache", True) and not args.no_cache and split.layout != "images"
    dataset = make_dataset(split, config["img_size"], cache=cache)
    loader = make_loader(dataset, args.batch_size or config["batch_size"],
                         train=False, workers=args.workers, pin_memory=cuda)
    max_deg = args.tta_range if args.tta_range is not None else training_rotation(config)
    spread = "the full circle" if max_deg >= 180.0 else f"+-{max_deg:g} degrees"
    engine = "onnxruntime" if args.backend == "onnxruntime" else precision.choose(device, amp).describe()
    log.info(f"predicting {len(split)} images on {device} ({engine}{', channels_last' if channels_last else ''}), "
             f"TTA over {args.tta} rotation{'s' * (args.tta > 1)}" + (f" spread over {spread}" if args.tta > 1 else ""))
    return predict_loader(model, loader, device, args.tta, amp, channels_last, desc=f"predict {split.name}",
                          max_deg=max_deg, mirror=mirror)


def camera_joints_of(predictions, stats, calibration):
    """Camera joints (N, 21, 3) of predictions, with a warning for those whose root depth fell back."""
    depth, fell_back = root_depths(predictions, stats, calibration)
    if fell_back.any():
        fallback = ("the depth the crop's framing gives" if calibration
                    else f"the training mean, {stats['root_depth_m']:.3f} m")
        log.warning(f"{fell_back.sum()} of {len(depth)} predictions put every joint on one camera ray (an "
                    f"untrained model?); their root depth is {fallback}")
    return geometry.uvd_to_xyz(predictions["uvd"], predictions["K"], depth)


def export_onnx(model, ckpt, config, args):
    """--export onnx: the file beside the checkpoint, kept only when it agrees with PyTorch on real images."""
    root = resolve_root(args.data_root, config)
    split = load_split(root, args.split or submission_split(detect_layout(root)))
    split = split.subset(np.arange(min(PARITY_IMAGES, len(split))))
    images = input_images(split, config["img_size"])
    predict = lambda net, x: predict_batch(net, x, channels_last=False).numpy()
    path, uv_px, depth_mm = export_with_parity(model.float().eval(), ckpt, config["img_size"], images, predict)
    log.info(f"wrote {shown(path)}: onnxruntime agrees with PyTorch on {len(images)} images of the {split.name} split "
             f"within {uv_px:.2g} px (u, v) and {depth_mm:.2g} mm (depth); tolerance {TOLERANCE_UV_PX} px, "
             f"{TOLERANCE_DEPTH_MM} mm")


def predict_pictures(model, ckpt, config, stats, args):
    """--images: joints of one's own pictures in PREFIX.json / PREFIX.npz, pictures with --viz."""
    files = list_pictures(args.images)
    sizes = picture_sizes(files)
    camera_known = args.focal is not None or bool(args.camera)
    K = read_cameras(args.camera, len(files)) if args.camera else centred_cameras(sizes, args.focal)
    split = pictures_split(files, K)
    name = Path(args.images[0]).stem if len(args.images) == 1 else "images"
    prefix = output_prefix(args.out, f"{ckpt.resolve().parent.name}_{name}_{args.hand}_tta{args.tta}")
    calibration, calibration_line = validation_calibration(ckpt.resolve().parent, config, stats)
    log.info(f"{len(files)} pictures, {args.hand} hand{'s' * (len(files) > 1)}; camera: "
             + ("given" if camera_known else f"unknown (focal {DEFAULT_FOCAL_PER_SIDE} x the longer side, centred; "
                                             f"no camera-space joints)") + f"; {calibration_line}")
    predictions = predict_split(model, split, config, args, resolve_device(args.device), mirror=args.hand == "left")
    xyz = camera_joints_of(predictions, stats, calibration)
    written = write_joints(prefix, files, geometry.project(xyz, K), xyz, K, camera_known, args.hand)
    log.info(f"wrote {' and '.join(str(shown(p)) for p in written)}")
    if args.viz:
        log.info(f"wrote {min(args.viz, len(files))} pictures to {shown(save_pictures(prefix, split, xyz, args.viz))}/")


def load_backend(state, ckpt, args):
    """The network to predict with: the checkpoint's PyTorch model, or its exported ONNX file."""
    if args.backend == "onnxruntime":
        return load_onnx(ckpt, img_size=state["config"]["img_size"])
    return load_model(state, ckpt)


@cli
def main(argv=None):
    args = parse_args(argv)
    messages.set_quiet(args.quiet)
    locations.apply_flags(args, "runs", "submissions", "cache", "synthetic")
    if args.check:
        print(check_file(args.check, args.data_root, args.split, args.joint_order))
        return
    check_numbers(args)
    ckpt = Path(args.ckpt) if args.ckpt else newest_checkpoint("best.pt")
    state = read_checkpoint(ckpt)
    config, stats = state["config"], state["stats"]
    log.info(f"checkpoint {shown(ckpt)}: {config['arch']}, {config['img_size']} px, epoch {state.get('epoch', '?')}")
    if "bone_ratio_mean" not in stats:  # written before checkpoints recorded them
        log.info("the checkpoint records no bone ratios of its training labels: the root depth expects the reference "
                 "hand's (a run trained now records them)")
    if args.export:
        return export_onnx(load_model(state, ckpt), ckpt, config, args)
    model = load_backend(state, ckpt, args)
    if args.images:
        return predict_pictures(model, ckpt, config, stats, args)
    root = resolve_root(args.data_root, config)
    split = load_split(root, args.split or submission_split(detect_layout(root)))
    fmt, joint_order = resolve_format(args.format, args.joint_order, split.layout)
    prefix = output_prefix(args.out, f"{ckpt.resolve().parent.name}_{split.name}_tta{args.tta}")
    calibration, calibration_line = validation_calibration(ckpt.resolve().parent, config, stats)
    log.info(f"data: the {split.name} split of {shown(root)} ({split.layout} layout)\n"
             f"{root_depth_source(split, stats)}; {calibration_line}")

    predictions = predict_split(model, split, config, args, resolve_device(args.device))
    xyz = camera_joints_of(predictions, stats, calibration)
    record = {"xyz": xyz, "ids": predictions["ids"], "split": split.name, "layout": split.layout,
              "data_root": str(Path(root).resolve()), "arch": config["arch"], "ckpt": str(ckpt.resolve()),
              "run_dir": str(ckpt.resolve().parent), "tta": args.tta, "bone_length_m": stats["bone_length_m"],
              "backend": args.backend,
              **({"constant_shape_m": np.asarray(stats["constant_shape_m"])} if "constant_shape_m" in stats else {})}
    npz, upload, notes = write_outputs(prefix, record, fmt, joint_order, expected_ids=split.image_ids)
    log.info(written_line(f"wrote {shown(npz)} and the upload file {shown(upload)}", fmt, joint_order, notes))
    if split.labelled:
        info = {"split": split.name, "arch": config["arch"], "ckpt": str(ckpt), "tta": args.tta,
                "backend": args.backend}
        log.info(f"wrote {shown(report_scores(prefix, xyz, split.xyz, stats.get('constant_shape_m'), info))}")
    if args.viz:
        log.info(f"wrote {args.viz} pictures to {shown(save_pictures(prefix, split, xyz, args.viz))}/")


if __name__ == "__main__":
    main()
