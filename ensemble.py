"""Average several prediction files of the same split into a named ensemble, with the outputs of predict.py.

    python ensemble.py [A.npz B.npz ...] [--weights w1 w2 ...] [--fit-weights [--val-preds VA.npz VB.npz ...]]
                       [--name NAME] [--out PREFIX] [--format freihand|mp21] [--joint-order ait|mano|freihand]
                       [--data-root DIR] [--viz K] [--quiet]

Members are the PREFIX.npz files of predict.py (or of ensemble.py): the same split, the same image ids in the same
order, joints in FreiHAND order (recognised from their bones, as predict.py --check does), or the run stops with one
line naming the two files and the difference. With none named, the members are the newest predict.py output of each
run in submissions/, for the dataset and split of the newest of them.

Weights: --weights (non-negative, normalised to sum 1); --fit-weights: non-negative weights summing to 1 that
minimise the validation PA-MPJPE of the blend, fitted on each member's validation predictions (by default the
val_pred.npz of the run folder the member records, or for a run of a K-fold set (train.py --folds K --fold I) the
val_pred.npz of all K runs of that set: its out-of-fold predictions of every training hand; --val-preds names other
files, e.g. predict.py --split val --tta 10 outputs) over the validation images all members share; otherwise equal
weights. The fit is deterministic: Nelder-Mead on softmax-parametrised weights started from equal weights, keeping
the best of that, equal weights and each single member, so the fitted blend never scores worse on validation than
its best member.

Blend: the weighted mean of the members' camera-space xyz. All members recover xyz through the same K and the
same root-depth rule, so averaging xyz averages their root-relative poses and their root positions alike.

Writes, as predict.py (one writer, one scorer, one check): PREFIX.npz, the upload file (PREFIX.zip, or
PREFIX/test_preds.json.gz in the course template's ait joint order unless --joint-order says otherwise),
PREFIX.metrics.json when the split is labelled, PREFIX_viz/ with --viz; and PREFIX.ensemble.json: name, members
(paths), weights, how they were chosen (given / fitted / equal) and, when fitted, the validation PA-MPJPE of each
member and of the blend.
Default PREFIX: submissions/<NAME>_<split>; default NAME: ensemble_<hash of the member paths>.
"""
import argparse
from pathlib import Path

import numpy as np

from core import locations, messages
from core.common import UserError, atomic_write, cli, shown
from core.json_files import json_text
from core.pictures import save_pictures
from prediction.ensembling import (blended_record, check_given_once, check_joint_orders, check_members_made_on,
                                   check_same_images, default_members, default_name, fit_weights, normalised,
                                   target_split, val_error, validation_set)
from scoring.report import report_scores
from training.rundir import validation_files
from uploads.kinds import MP21_ORDER
from uploads.naming import output_prefix, resolve_format
from uploads.records import load_predictions
from uploads.writing import write_outputs, written_line

log = messages.logger(__name__)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("members", nargs="*", metavar="PRED.npz",
                   help="prediction files of predict.py (default: the newest of each run in submissions/)")
    p.add_argument("--weights", nargs="+", type=float, help="one non-negative weight per member")
    p.add_argument("--fit-weights", action="store_true", help="fit the weights on validation predictions")
    p.add_argument("--val-preds", nargs="+", metavar="VAL.npz", help="validation predictions, one per member "
                                                                     "(default: each member's run val_pred.npz)")
    p.add_argument("--name", help="ensemble name (default: ensemble_<hash of the members>)")
    p.add_argument("--out", help="output prefix (default: submissions/<name>_<split>)")
    p.add_argument("--format", help="upload format: freihand | mp21 (default: the layout's)")
    p.add_argument("--joint-order", help=f"mp21 joint order: {MP21_ORDER} (default) | mano | freihand")
    p.add_argument("--data-root", help="dataset folder (default: the one the members record)")
    p.add_argument("--viz", type=int, default=0, metavar="K", help="save K pictures to PREFIX_viz/")
    locations.add_flags(p, "submissions")
    messages.add_quiet_flag(p)
    return p.parse_args(argv)


def check_options(args):
    if len(args.members) < 2:
        raise UserError("give at least two prediction files to ensemble")
    check_given_once(args.members, "members")
    check_given_once(args.val_preds or [], "--val-preds")
    if args.weights and args.fit_weights:
        raise UserError("--weights and --fit-weights exclude each other: give weights or fit them")
    if args.val_preds and not args.fit_weights:
        raise UserError("--val-preds is only used with --fit-weights")
    if args.val_preds and len(args.val_preds) != len(args.members):
        raise UserError(f"--val-preds: {len(args.val_preds)} files for {len(args.members)} members; give one each")
    if args.viz < 0:
        raise UserError(f"--viz {args.viz}: must be at least 0")


def choose_weights(args, records, paths):
    """{'weights': [...], 'weights_source': given | fitted | equal, and 'validation' scores when fitted}."""
    if args.weights:
        return {"weights": normalised(args.weights, len(paths)).tolist(), "weights_source": "given"}
    if not args.fit_weights:
        return {"weights": [1.0 / len(paths)] * len(paths), "weights_source": "equal"}
    val_paths = args.val_preds or [None] * len(records)
    file_sets = [validation_files(r, p, v) for r, p, v in zip(records, paths, val_paths)]
    stack, gt, files = validation_set(records, file_sets, args.data_root)
    weights = fit_weights(stack, gt)
    validation = {"files": [str(f) for f in files], "n": len(gt),
                  "members_pa_mpjpe_mm": [val_error(stack, gt, one) for one in np.eye(len(paths))],
                  "blend_pa_mpjpe_mm": val_error(stack, gt, weights)}
    log.info(f"weights fitted on {len(gt)} validation images: blend {validation['blend_pa_mpjpe_mm']:.2f} mm "
             f"PA-MPJPE, members {', '.join(f'{e:.2f}' for e in validation['members_pa_mpjpe_mm'])} mm")
    return {"weights": weights.tolist(), "weights_source": "fitted", "validation": validation}


@cli
def main(argv=None):
    args = parse_args(argv)
    messages.set_quiet(args.quiet)
    locations.apply_flags(args, "submissions")
    if not args.members:
        args.members = default_members()
        log.info(f"members: the newest prediction of each run in {shown(locations.root('submissions'))}/: "
                 f"{', '.join(p.name for p in args.members)}")
    check_options(args)
    paths = [Path(p) for p in args.members]
    records = [load_predictions(p) for p in paths]
    check_members_made_on(records, paths, args.data_root)
    check_same_images(records, paths)
    check_joint_orders(records, paths)
    split = target_split(records, args.data_root)
    layout = records[0].get("layout") or (split.layout if split is not None else None)
    if layout is None and args.format is None:
        raise UserError(f"{paths[0]} records no dataset layout; pass --format or --data-root")
    fmt, joint_order = resolve_format(args.format, args.joint_order, layout)
    name = args.name or default_name(paths)
    prefix = output_prefix(args.out, f"{name}_{records[0]['split']}")
    report = {"name": name, "members": [str(p) for p in paths], "split": records[0]["split"],
              **choose_weights(args, records, paths)}
    log.info(f"{name}: {len(paths)} members, {report['weights_source']} weights "
             f"{', '.join(f'{w:.3f}' for w in report['weights'])}")
    record = blended_record(records, report, layout, split)
    npz, upload, notes = write_outputs(prefix, record, fmt, joint_order,
                                       expected_ids=split.image_ids if split is not None else None)
    report_path = Path(f"{prefix}.ensemble.json")
    with atomic_write(report_path) as tmp:
        tmp.write_text(json_text(report, indent=2))
    log.info(written_line(f"wrote {shown(npz)}, {shown(report_path)} and the upload file {shown(upload)}", fmt,
                          joint_order, notes))
    if split is not None and split.labelled:
        info = {"split": split.name, "arch": "ensemble", "members": report["members"], "weights": report["weights"]}
        scores = report_scores(prefix, record["xyz"], split.xyz, record.get("constant_shape_m"), info)
        log.info(f"wrote {shown(scores)}")
    if args.viz and split is None:
        log.warning("--viz: the members' dataset is not available; pass --data-root to draw pictures")
    elif args.viz:
        log.info(f"wrote {args.viz} pictures to {shown(save_pictures(prefix, split, record['xyz'], args.viz))}/")


if __name__ == "__main__":
    main()
