"""Ensembling prediction files of one split: the members' checks, the blend and how far the members disagree, the
weights fitted on validation predictions, and the ensemble's prediction record. ensemble.py is its command line;
what each step does and why is said there."""
import hashlib
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

from core import locations
from core.common import UserError, progress
from core.geometry import ROOT_JOINT
from data import existing_data_root, resolve_or_generate_data_root
from data.joints import detect_order
from data.readers import detect_layout, load_all_training, load_split
from scoring import metrics
from scoring.report import labels_for, rows_of
from uploads.joint_checks import check_joint_order
from uploads.provenance import check_made_on, check_same_data_root
from uploads.records import load_predictions


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


def check_given_once(files, option):
    """No file of ``files`` (given to ``option``) is named twice, by any spelling of its path."""
    resolved = [Path(path).resolve() for path in files]
    for i, path in enumerate(resolved):
        if path in resolved[:i]:
            raise UserError(f"{option}: {files[resolved.index(path)]} and {files[i]} are one file given twice; "
                            f"give each file once")


def check_members_made_on(records, paths, data_root=None):
    """The members record one data root, and, with ``data_root`` (--data-root) given, were made on that dataset."""
    check_same_data_root(records, paths)
    for record, path in zip(records, paths):
        if data_root and record.get("data_root"):
            check_made_on(record, path, data_root, "member")


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


def target_split(records, data_root):
    """The members' split, read from --data-root or else from the data root they record; None when that holds
    no dataset any more (then nothing is scored or drawn)."""
    if data_root is None:
        data_root = records[0].get("data_root")
        if not data_root or detect_layout(data_root) is None:
            return None
    return load_split(existing_data_root(data_root), records[0]["split"])


def default_name(paths):
    digest = hashlib.sha1("\n".join(str(Path(p).resolve()) for p in paths).encode()).hexdigest()[:8]
    return f"ensemble_{digest}"


# --- fitting weights on validation --------------------------------------------------------------------------

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


def validation_set(records, file_sets, data_root):
    """(member predictions (M, V, 21, 3), ground truth (V, 21, 3), files) over the validation ids all members
    share; ``file_sets`` holds each member's validation files (``training.rundir.validation_files``: a member
    trained in K folds contributes the out-of-fold predictions of its whole fold set)."""
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


# --- the ensemble's record ------------------------------------------------------------------------------------

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
