"""Average several prediction files of the same split into a named ensemble, with the outputs of predict.py.

    python ensemble.py [A.npz B.npz ...] [--weights w1 w2 ...] [--fit-weights [--val-preds VA.npz VB.npz ...]]
                       [--name NAME] [--out PREFIX] [--format freihand|mp21] [--joint-order ait|mano|freihand]
                       [--data-root DIR] [--viz K]

Members are the PREFIX.npz files of predict.py (or of ensemble.py): the same split, the same image ids in the same
order, joints in FreiHAND order (recognised from their bones, as predict.py --check does), or the run stops with one
line naming the two files and the difference. With none named, the members are the newest predict.py output of each
run in submissions/, for the dataset and split of the newest of them.

Weights: --weights (non-negative, normalised to sum 1); --fit-weights: non-negative weights summing to 1 that
minimise the validation PA-MPJPE of the blend, fitted on each member's validation predictions (by default the
val_pred.npz of the run folder the member records, or for a run of a K-fold set (train.py --folds K --fold I)
the val_pred.npz of all K runs of that set: its out-of-fold predictions of every training hand; --val-preds names
other files, e.g. predict.py --split val --tta 10 outputs) over the validation images all members share;
otherwise equal weights. The fit is
deterministic: Nelder-Mead on softmax-parametrised weights started from equal weights, keeping the best of that,
equal weights and each single member, so the fitted blend never scores worse on validation than its best member.

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
import hashlib
import json
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

from core import locations
from core.common import UserError, atomic_write, cli, progress, shown
from core.geometry import ROOT_JOINT
from core.pictures import save_pictures
from core.json_files import json_text
from data import existing_data_root, resolve_or_generate_data_root
from data.joints import detect_order
from data.readers import detect_layout, load_all_training, load_split
from scoring import metrics
from scoring.report import labels_for, report_scores, rows_of
from uploads.joint_checks import check_joint_order
from uploads.kinds import MP21_ORDER
from uploads.naming import output_prefix, resolve_format
from uploads.provenance import check_made_on, check_same_data_root
from uploads.records import load_predictions
from uploads.writing import write_outputs, written_line


# --- members ------------------------------------------------------------------------------------------------

def check_same_images(records, paths):
    """Every record covers the first one's split with the same ids in the same order; else one line naming the
    two files and the difference."""
    first, first_path = records[0], paths[0]
    for record, path in zip(records[1:], paths[1:]):
        pair = f"{first_path} and {path}"
        if record["split"] != first["split"]:
            raise UserError(f"{pair} predict different splits ({first['split']!r} vs {record['split']!r}); "
                            f"ensemble predictions of one split")
        if len(record["ids"]) != len(first["ids"]):
            raise UserError(f"{pair} hold different numbers of predictions ({len(first['ids'])} vs "
                            f"{len(record['ids'])}); predict the whole split with each model")
        if not np.array_equal(record["ids"], first["ids"]):
            row = int(np.flatnonzero(record["ids"] != first["ids"])[0])
            raise UserError(f"{pair} differ in image ids from row {row} (id {first['ids'][row]} vs "
                            f"{record['ids'][row]}); they were made on different data")


def check_joint_orders(records, paths):
    """Every member holds FreiHAND order, as predict.py writes it (recognised from the bones, ``detect_order``); else
    one line naming the two files in different orders, or the one in another order."""
    found = [(detect_order(record["xyz"])[0], path) for record, path in zip(records, paths)]
    known = [(order, path) for order, path in found if order is not None]
    for (first, first_path), (order, path) in zip(known, known[1:]):
        if order != first:
            raise UserError(f"{first_path} and {path} hold joints in different orders ({first} vs {order}, "
                            f"recognised from their bones); members must be prediction files of predict.py, all in "
                            f"FreiHAND order")
    for record, path in zip(records, paths):
        check_joint_order(record["xyz"], "freihand", str(path),
                          "members must be prediction files of predict.py, which hold FreiHAND order")


def blend(xyz_stack, weights):
    """Weighted mean (N, 21, 3) of member predictions (M, N, 21, 3) with weights (M,) summing to 1."""
    return np.tensordot(np.asarray(weights, np.float64), xyz_stack, axes=1)


def member_spread_mm(xyz_stack, weights):
    """(N,) how far the members disagree: the weighted RMS distance (mm) of each member's root-relative joints
    (M, N, 21, 3) from the blend's, over members and joints (data/pseudo.py ranks pseudo-labels by it)."""
    relative = xyz_stack - xyz_stack[:, :, ROOT_JOINT:ROOT_JOINT + 1]
    squared = ((relative - blend(relative, weights)) ** 2).sum(-1).mean(-1)          # (M, N)
    return np.sqrt(np.tensordot(np.asarray(weights, np.float64), squared, axes=1)) * 1000.0


def normalised(weights, count):
    weights = np.asarray(weights, np.float64)
    if len(weights) != count:
        raise UserError(f"--weights: {len(weights)} weights for {count} members; give one per member")
    if (weights < 0).any() or not np.isfinite(weights).all() or weights.sum() <= 0:
        raise UserError(f"--weights {' '.join(f'{w:g}' for w in weights)}: weights must be non-negative and "
                        f"not all zero")
    return weights / weights.sum()


# --- fitting weights on validation --------------------------------------------------------------------------

def validation_files(record, path, explicit=None):
    """The validation predictions of a member: ``explicit``, else the val_pred.npz of the run it records, or,
    for a run of a K-fold set, the val_pred.npz of all K runs of that set (its out-of-fold predictions)."""
    if explicit is not None:
        return [Path(explicit)]
    run_dir = record.get("run_dir")
    if not run_dir:
        raise UserError(f"--fit-weights: {path} records no run folder; pass --val-preds (one file per member) "
                        f"or --weights")
    files = [Path(run) / "val_pred.npz" for run in fold_set(Path(run_dir))]
    for candidate in files:
        if not candidate.is_file():
            raise UserError(f"--fit-weights: {candidate} (validation predictions for {path}) does not exist; "
                            f"pass --val-preds or --weights")
    return files


RUN_ONLY_KEYS = ("fold", "device", "workers", "checkpoint_minutes", "cache", "precision")  # config keys that may differ
# between the runs of one fold set


def fold_set(run_dir):
    """The run folders of the K-fold set ``run_dir`` belongs to (runs beside it whose configs differ only in
    RUN_ONLY_KEYS), in fold order, ``run_dir`` itself for its own fold; just ``run_dir`` for a hold-out run (or a
    folder without a config.json). An incomplete set, or a fold trained twice, is a UserError."""
    def family(folder):
        config = json.loads((folder / "config.json").read_text())
        return config, {k: v for k, v in config.items() if k not in RUN_ONLY_KEYS}

    if not (run_dir / "config.json").is_file() or not family(run_dir)[0].get("folds"):
        return [run_dir]
    config, key = family(run_dir)
    by_fold = {config["fold"]: [run_dir]}
    for folder in sorted(run_dir.parent.glob("*/config.json")):
        other, other_key = family(folder.parent)
        if other_key == key and other["fold"] != config["fold"]:
            by_fold.setdefault(other["fold"], []).append(folder.parent)
    missing = [fold for fold in range(config["folds"]) if fold not in by_fold]
    if missing:
        raise UserError(f"--fit-weights: the {config['folds']}-fold set of {run_dir} lacks fold(s) "
                        f"{', '.join(map(str, missing))}; train them (python train.py --recipe {config['recipe']} "
                        f"--folds {config['folds']} --fold {missing[0]} ...) or pass --val-preds")
    twice = [runs for runs in by_fold.values() if len(runs) > 1]
    if twice:
        raise UserError(f"--fit-weights: fold set of {run_dir}: {' and '.join(map(str, twice[0]))} train the same "
                        f"fold; move one out of {run_dir.parent} or pass --val-preds")
    return [by_fold[fold][0] for fold in range(config["folds"])]


def concatenated_predictions(files):
    """One prediction record from several validation files of one member (its fold set)."""
    parts = [load_predictions(f) for f in files]
    for part, file in zip(parts, files):
        if part["split"] != "val":
            raise UserError(f"--fit-weights: {file} predicts split {part['split']!r}, not 'val'")
    ids = np.concatenate([p["ids"] for p in parts])
    if len(np.unique(ids)) != len(ids):
        raise UserError(f"--fit-weights: {', '.join(map(str, files))} predict some image twice; a fold set's "
                        f"validation images are disjoint")
    return {**parts[0], "xyz": np.concatenate([p["xyz"] for p in parts]), "ids": ids}


def validation_set(records, paths, val_paths, data_root):
    """(member predictions (M, V, 21, 3), ground truth (V, 21, 3), files) over the validation ids all members
    share. A member trained in K folds contributes the out-of-fold predictions of its whole fold set."""
    file_sets = [validation_files(r, p, v) for r, p, v in zip(records, paths, val_paths or [None] * len(records))]
    members = [concatenated_predictions(files) for files in file_sets]
    files = [files[0] for files in file_sets]  # the first of a fold set names it in messages
    check_joint_orders(members, files)
    common = members[0]["ids"]
    for member in members[1:]:
        common = np.intersect1d(common, member["ids"])
    if len(common) == 0:
        raise UserError(f"--fit-weights: {', '.join(map(str, files))} share no validation image")
    root = resolve_or_generate_data_root(data_root or records[0].get("data_root") or None)
    for member, file in zip(members, files):  # val_pred.npz records the data it validated on
        if member.get("data_root"):
            check_made_on(member, file, root, "--fit-weights: validation file")
    labelled = load_all_training(root) if detect_layout(root) == "freihand" else load_split(root, "val")
    if not labelled.labelled:
        raise UserError(f"--fit-weights: the val split of {root} has no labels")
    stack = np.stack([member["xyz"][rows_of(member["ids"], common)[0]] for member in members])
    return stack, labels_for(labelled, common, "validation predictions"), [f for fs in file_sets for f in fs]


def val_error(xyz_stack, gt, weights):
    """Mean PA-MPJPE (mm) of the blend on validation."""
    return float(metrics.pa_mpjpe(blend(xyz_stack, weights), gt).mean() * 1000.0)


def softmax(logits):
    e = np.exp(logits - logits.max())
    return e / e.sum()


def fit_weights(xyz_stack, gt):
    """Non-negative weights (M,) summing to 1 with the lowest validation PA-MPJPE found: Nelder-Mead on softmax
    logits from equal weights, compared with equal weights and each single member (deterministic)."""
    count = len(xyz_stack)
    with progress(desc=f"fitting weights on {len(gt)} validation predictions", unit="trial") as bar:
        def error_of(logits):
            bar.update()
            return val_error(xyz_stack, gt, softmax(logits))
        result = minimize(error_of, np.zeros(count), method="Nelder-Mead",
                          options={"xatol": 1e-4, "fatol": 1e-6, "maxiter": 200 * count})
    candidates = [np.full(count, 1.0 / count), softmax(result.x), *np.eye(count)]
    errors = [val_error(xyz_stack, gt, w) for w in candidates]
    return candidates[int(np.argmin(errors))]


# --- the command line ----------------------------------------------------------------------------------------

def default_members(folder=None):
    """The newest predict.py output (.npz) of each run in ``folder``, for the dataset and split of the newest
    such file (default folder: the submissions root)."""
    folder = folder or locations.root("submissions")
    newest_first = sorted(folder.glob("*.npz"), key=lambda path: path.stat().st_mtime, reverse=True)
    by_run, images = {}, None
    for path in newest_first:
        record = load_predictions(path)
        if not record.get("run_dir"):  # an ensemble's own output
            continue
        images = images or (record.get("data_root"), record["split"])
        if (record.get("data_root"), record["split"]) == images:
            by_run.setdefault(record["run_dir"], path)
    if len(by_run) < 2:
        raise UserError(f"{folder} holds predictions of {len(by_run)} run(s); an ensemble needs two: predict with "
                        f"another run (`python predict.py --ckpt runs/NAME/best.pt`) or name the members: "
                        f"python ensemble.py A.npz B.npz")
    return sorted(by_run.values())


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
    p.add_argument("--joint-order", help=f"mp21 joint order: {MP21_ORDER} (default, the course template's) | mano | "
                                         f"freihand")
    p.add_argument("--data-root", help="dataset folder (default: the one the members record)")
    p.add_argument("--viz", type=int, default=0, metavar="K", help="save K pictures to PREFIX_viz/")
    locations.add_flags(p, "submissions")
    return p.parse_args(argv)


def check_options(args):
    if len(args.members) < 2:
        raise UserError("give at least two prediction files to ensemble")
    for files, option in ((args.members, "members"), (args.val_preds or [], "--val-preds")):
        resolved = [Path(path).resolve() for path in files]
        for i, path in enumerate(resolved):
            if path in resolved[:i]:
                raise UserError(f"{option}: {files[resolved.index(path)]} and {files[i]} are one file given twice; "
                                f"give each file once")
    if args.weights and args.fit_weights:
        raise UserError("--weights and --fit-weights exclude each other: give weights or fit them")
    if args.val_preds and not args.fit_weights:
        raise UserError("--val-preds is only used with --fit-weights")
    if args.val_preds and len(args.val_preds) != len(args.members):
        raise UserError(f"--val-preds: {len(args.val_preds)} files for {len(args.members)} members; give one each")
    if args.viz < 0:
        raise UserError(f"--viz {args.viz}: must be at least 0")


def target_split(records, data_root):
    """The members' split, read from --data-root or else from the data root they record; None when that holds
    no dataset any more (then nothing is scored or drawn)."""
    if data_root is None:
        data_root = records[0].get("data_root")
        if not data_root or detect_layout(data_root) is None:
            return None
    return load_split(existing_data_root(data_root), records[0]["split"])


def choose_weights(args, records, paths):
    """{'weights': [...], 'weights_source': given | fitted | equal, and 'validation' scores when fitted}."""
    if args.weights:
        return {"weights": normalised(args.weights, len(paths)).tolist(), "weights_source": "given"}
    if not args.fit_weights:
        return {"weights": [1.0 / len(paths)] * len(paths), "weights_source": "equal"}
    stack, gt, files = validation_set(records, paths, args.val_preds, args.data_root)
    weights = fit_weights(stack, gt)
    validation = {"files": [str(f) for f in files], "n": len(gt),
                  "members_pa_mpjpe_mm": [val_error(stack, gt, one) for one in np.eye(len(paths))],
                  "blend_pa_mpjpe_mm": val_error(stack, gt, weights)}
    print(f"weights fitted on {len(gt)} validation images: blend {validation['blend_pa_mpjpe_mm']:.2f} mm "
          f"PA-MPJPE, members {', '.join(f'{e:.2f}' for e in validation['members_pa_mpjpe_mm'])} mm")
    return {"weights": weights.tolist(), "weights_source": "fitted", "validation": validation}


def default_name(paths):
    digest = hashlib.sha1("\n".join(str(Path(p).resolve()) for p in paths).encode()).hexdigest()[:8]
    return f"ensemble_{digest}"


def blended_record(records, report, layout, split):
    """The ensemble's prediction record: the blend, the members' ids and split, members and weights."""
    weights, stack = np.asarray(report["weights"]), np.stack([r["xyz"] for r in records])
    record = {"xyz": blend(stack, weights), "ids": records[0]["ids"], "spread_mm": member_spread_mm(stack, weights),
              "split": records[0]["split"], "layout": layout or "", "arch": "ensemble",
              "data_root": str(split.root.resolve()) if split is not None else records[0].get("data_root", ""),
              "members": report["members"], "weights": weights}
    if all("constant_shape_m" in r for r in records):  # the members' yardstick hands, one shape
        record["constant_shape_m"] = metrics.generalized_procrustes_mean([r["constant_shape_m"] for r in records])
    return record


@cli
def main(argv=None):
    args = parse_args(argv)
    locations.apply_flags(args, "submissions")
    if not args.members:
        args.members = default_members()
        print(f"members: the newest prediction of each run in {shown(locations.root('submissions'))}/: "
              f"{', '.join(p.name for p in args.members)}")
    check_options(args)
    paths = [Path(p) for p in args.members]
    records = [load_predictions(p) for p in paths]
    check_same_data_root(records, paths)
    for record, path in zip(records, paths):
        if args.data_root and record.get("data_root"):
            check_made_on(record, path, args.data_root, "member")
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
    print(f"{name}: {len(paths)} members, {report['weights_source']} weights "
          f"{', '.join(f'{w:.3f}' for w in report['weights'])}")
    record = blended_record(records, report, layout, split)
    npz, upload, notes = write_outputs(prefix, record, fmt, joint_order,
                                       expected_ids=split.image_ids if split is not None else None)
    report_path = Path(f"{prefix}.ensemble.json")
    with atomic_write(report_path) as tmp:
        tmp.write_text(json_text(report, indent=2))
    print(written_line(f"wrote {shown(npz)}, {shown(report_path)} and the upload file {shown(upload)}", fmt,
                       joint_order, notes))
    if split is not None and split.labelled:
        info = {"split": split.name, "arch": "ensemble", "members": report["members"], "weights": report["weights"]}
        print(f"wrote {shown(report_scores(prefix, record['xyz'], split.xyz, record.get('constant_shape_m'), info))}")
    if args.viz and split is None:
        print("--viz: the members' dataset is not available; pass --data-root to draw pictures")
    elif args.viz:
        print(f"wrote {args.viz} pictures to {shown(save_pictures(prefix, split, record['xyz'], args.viz))}/")


if __name__ == "__main__":
    main()
