"""Prediction records (.npz): what predict.py and ensemble.py keep for ensembling and --check reads back.
``xyz`` (N, 21, 3) metres in FreiHAND order, ``ids`` (N,) image ids, ``split``; and what made them."""
import zipfile
from pathlib import Path

import numpy as np

from core import geometry
from core.common import UserError
from data import existing_data_root
from data.readers import detect_layout, load_split, submission_split
from uploads.joint_checks import check_joints
from uploads.provenance import check_made_on, check_metres, check_spread

REQUIRED_RECORD_KEYS = ("xyz", "ids", "split")


def validate_predictions(xyz, ids, what, expected_ids=None):
    """Raise a UserError unless xyz is (N, 21, 3) finite with N >= 1 unique ids (equal to ``expected_ids``,
    in order, when given)."""
    xyz, ids = np.asarray(xyz), np.asarray(ids)
    if xyz.ndim != 3 or xyz.shape[1:] != (geometry.NUM_JOINTS, 3) or len(xyz) == 0:
        raise UserError(f"{what}: xyz has shape {xyz.shape}, expected (N, 21, 3) with N >= 1")
    if ids.shape != (len(xyz),):
        raise UserError(f"{what}: {ids.size} ids for {len(xyz)} predictions")
    values, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise UserError(f"{what}: image id {values[counts > 1][0]} occurs {counts.max()} times; ids must be unique")
    bad = ~np.isfinite(xyz).all(axis=(1, 2))
    if bad.any():
        raise UserError(f"{what}: {bad.sum()} of {len(xyz)} predictions hold NaN or inf (first: image id "
                        f"{ids[bad][0]}); nothing was written")
    if expected_ids is not None:
        expected_ids = np.asarray(expected_ids)
        if len(ids) != len(expected_ids):
            raise UserError(f"{what}: {len(ids)} predictions, but the split has {len(expected_ids)} images")
        if not np.array_equal(ids, expected_ids):
            row = int(np.flatnonzero(ids != expected_ids)[0])
            raise UserError(f"{what}: row {row} is image id {ids[row]}, the split's row {row} is {expected_ids[row]}")


def write_record(tmp, record, joint_order="freihand"):
    """The .npz writer: a record (dict of arrays, strings and numbers) into the file ``tmp``. Returns its joints as
    written, (N, 21, 3) metres."""
    with open(tmp, "wb") as f:
        np.savez(f, **{key: np.asarray(value) for key, value in record.items()})
    return np.asarray(record["xyz"], np.float64)


def load_predictions(path):
    """A .npz of predictions (predict.py, ensemble.py or a run's val_pred.npz) -> dict: arrays, and plain str /
    numbers for scalars. Missing keys or a broken file are a UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; write predictions with `python predict.py`")
    try:
        with np.load(path, allow_pickle=False) as data:
            record = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise UserError(f"{path} is not a readable .npz of predictions ({type(err).__name__}: {err}); "
                        f"write it again with predict.py") from None
    missing = [key for key in REQUIRED_RECORD_KEYS if key not in record]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}; it is not a prediction file of predict.py")
    record = {key: value.item() if value.ndim == 0 else value for key, value in record.items()}
    record["xyz"], record["ids"] = record["xyz"].astype(np.float64), record["ids"].astype(np.int64)
    validate_predictions(record["xyz"], record["ids"], str(path))
    check_metres(record["xyz"], str(path))
    check_spread(record, path)
    return record


def expected_split(data_root, split_name, record=None):
    """The split a file must cover: --data-root / --split when given (never generated: --check only reads); for a
    record, the split it records while its data root holds a dataset; else None."""
    if data_root or split_name:
        root = existing_data_root(data_root)
        return load_split(root, split_name or submission_split(detect_layout(root)))
    if record is not None and record.get("data_root") and detect_layout(record["data_root"]) is not None:
        return load_split(record["data_root"], record["split"])
    return None


def check_record(path, kind, order, data_root, split_name):
    """--check of a prediction file: (the OK line's start, the joint check's notes); its ids checked against the
    split when one is known."""
    record = load_predictions(path)
    if data_root and record.get("data_root"):
        check_made_on(record, path, existing_data_root(data_root), "prediction file")
    split = expected_split(data_root, split_name, record)
    if split is not None:
        validate_predictions(record["xyz"], record["ids"], str(path), expected_ids=split.image_ids)
    notes = check_joints(record["xyz"], kind, order, str(path), kind.order_hint)
    where = f", matching the {split.name} split of {split.root}" if split is not None else ""
    line = f"OK: {path}: {len(record['xyz'])} predictions of split {record['split']!r} (21 x 3, {kind.unit}){where}"
    return line, notes
