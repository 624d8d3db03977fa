"""Submission files: prediction records (.npz), the upload writers (FreiHAND's zip, the course's json.gz) and
their readers (``--check``), the checks every file's joints pass (unit, joint order, depths), output naming,
and the local scoring table. Used by predict.py and ensemble.py.
"""
import gzip
import json
import zipfile
import zlib
from pathlib import Path

import numpy as np

from core import geometry
from scoring import metrics
from core.common import SUBMISSIONS_ROOT, UserError, atomic_write, check_writable
from data.joints import ORDERS, detect_order, from_freihand
from data import existing_data_root
from data.readers import detect_layout, load_split, submission_split

FORMATS = ("freihand", "mp21")
MP21_ORDER = "ait"                   # the course template's joint order (its JointInfo): the course scores in it
MP21_UPLOAD = "test_preds.json.gz"   # the name the course template writes its upload under
DEFAULT_ORDER = {"npz": "freihand", "freihand": "freihand", "mp21": MP21_ORDER}   # per kind of file
OUTPUT_SUFFIXES = (".zip", ".json.gz", ".npz")
ZIP_MEMBER = "pred.json"             # the file name FreiHAND's Codalab scorer reads from the zip
FREIHAND_EVAL_SIZE = 3960            # images in FreiHAND's evaluation set
MESH_VERTICES = 778                  # MANO vertices per sample in pred.json
DECIMALS_M, DECIMALS_MM = 7, 4       # written precision: 0.1 micrometre either way
REQUIRED_RECORD_KEYS = ("xyz", "ids", "split")


# --- options and names ------------------------------------------------------------------------------------

def resolve_format(fmt, joint_order, layout):
    """(format, joint order) from the options and the layout: freihand files are always in FreiHAND order."""
    fmt = fmt or ("mp21" if layout == "mp21" else "freihand")
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if joint_order is not None and joint_order not in ORDERS:
        raise UserError(f"--joint-order {joint_order!r}: choose one of {', '.join(ORDERS)}")
    if fmt == "freihand":
        if joint_order not in (None, "freihand"):
            raise UserError(f"--joint-order {joint_order}: the freihand format is always in FreiHAND order; "
                            f"leave out --joint-order or use --format mp21")
        return fmt, "freihand"
    return fmt, joint_order or MP21_ORDER


def output_prefix(out, default_name):
    """PREFIX from --out (a known suffix such as .zip is dropped), else SUBMISSIONS_ROOT/default_name."""
    prefix = Path(out) if out else SUBMISSIONS_ROOT / default_name
    for suffix in OUTPUT_SUFFIXES:
        if prefix.name.endswith(suffix):
            prefix = prefix.with_name(prefix.name[:-len(suffix)])
    check_writable(prefix.parent, "the folder of --out")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    return prefix


# --- prediction records (.npz) -----------------------------------------------------------------------------

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


def save_record(path, record):
    """A prediction record (dict of arrays, strings and numbers) as .npz, atomically, its joints checked as --check
    checks them (``check_joints``) before it replaces ``path``. Returns the check's notes."""
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **{key: np.asarray(value) for key, value in record.items()})
        return check_joints(np.asarray(record["xyz"], np.float64), "npz", "freihand", str(path), NOT_FREIHAND)


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
    return record


# --- what a file's joints look like: unit, joint order, depths ----------------------------------------------

UNITS = {"npz": "metres", "freihand": "metres", "mp21": "millimetres"}    # the unit of each kind of file
READER = {"npz": "a prediction file", "freihand": "FreiHAND", "mp21": "the course"}
TO_METRES = {"metres": 1.0, "millimetres": 0.001}
PLAUSIBLE_DEPTH_M = (0.05, 5.0)      # the wrist of a hand in front of a camera
PLAUSIBLE_SPREAD_M = (0.015, 0.2)    # a hand's RMS distance of its joints from their centroid
NOT_FREIHAND = "the predictions are not in FreiHAND order; nothing was written"


def joint_spread(xyz):
    """(N,) RMS distance of each hand's joints (N, 21, 3) from their centroid, in their unit."""
    centred = xyz - xyz.mean(1, keepdims=True)
    return np.sqrt((centred ** 2).sum(-1).mean(-1))


def looks_like_hands(xyz_m):
    """Whether the median wrist depth and joint spread of (N, 21, 3) metres fit hands in front of a camera. The
    wrist is slot 0 in every joint order."""
    depth, spread = np.median(xyz_m[:, 0, 2]), np.median(joint_spread(xyz_m))
    return bool(PLAUSIBLE_DEPTH_M[0] <= depth <= PLAUSIBLE_DEPTH_M[1]
                and PLAUSIBLE_SPREAD_M[0] <= spread <= PLAUSIBLE_SPREAD_M[1])


def check_unit(xyz, kind, what):
    """A UserError when joints (N, 21, 3) meant to be in the unit of ``kind`` look like hands only in the other unit
    (depth and size both a factor 1000 off). Far-away or shapeless hands are left to ``depth_warning``."""
    unit = UNITS[kind]
    other = "millimetres" if unit == "metres" else "metres"
    if looks_like_hands(xyz * TO_METRES[unit]) or not looks_like_hands(xyz * TO_METRES[other]):
        return
    raise UserError(f"{what}: the hands look like {other} (median wrist depth {np.median(xyz[:, 0, 2]):.4g}, median "
                    f"joint spread {np.median(joint_spread(xyz)):.4g}); {READER[kind]} wants {unit}")


def depth_warning(xyz_m):
    """A line on wrist depths of (N, 21, 3) metres outside PLAUSIBLE_DEPTH_M, else None."""
    depth, (low, high) = xyz_m[:, 0, 2], PLAUSIBLE_DEPTH_M
    outside = (depth < low) | (depth > high)
    if not outside.any():
        return None
    extremes = []
    if depth.min() < low:
        extremes.append(f"down to {depth.min():.3g} m")
    if depth.max() > high:
        extremes.append(f"up to {depth.max():.3g} m")
    return (f"warning: wrist depths {' and '.join(extremes)} ({outside.sum()} of {len(depth)} outside {low:g}-{high:g} "
            f"m): implausible for a hand in front of a camera (an untrained model?); aligned scores ignore depth")


def check_joint_order(xyz, expected, what, hint):
    """The joint order ``detect_order`` finds in hands (N, 21, 3), as a phrase for an OK line; a UserError naming
    both orders when it finds another than ``expected``. ``hint``: the fix ({found} and {expected} are filled in)."""
    found, misfits = detect_order(xyz)
    if found is None:
        return "joint order not recognisable from the bones (no order fits a hand clearly)"
    if found != expected:
        raise UserError(f"{what}: the joints are in {found} order, not {expected} (their bones fit a hand with misfit "
                        f"{misfits[found]:.2f} read as {found}, {misfits[expected]:.2f} as {expected}); "
                        + hint.format(found=found, expected=expected))
    return f"joints in {found} order (recognised from the bones)"


def check_joints(xyz, kind, order, what, hint):
    """What --check and every writer check in a file's joints (N, 21, 3) of ``kind`` ('npz', 'freihand', 'mp21'),
    in its unit: the unit and the joint ``order`` (else a UserError, ``hint`` the fix of a wrong order). Returns the
    notes for the OK line: the order found and a depth warning, if any."""
    check_unit(xyz, kind, what)
    notes = [check_joint_order(xyz, order, what, hint), depth_warning(xyz * TO_METRES[UNITS[kind]])]
    return [note for note in notes if note]


# --- upload files ---------------------------------------------------------------------------------------------

def json_array(values, decimals):
    return json.dumps(np.round(np.asarray(values, np.float64), decimals).tolist())


def mesh_placeholder(xyz):
    """The vertex written for every one of the 778 MANO vertices of each sample: its joints' centroid (N, 3)."""
    return xyz.mean(1)


def freihand_json_chunks(xyz):
    """pred.json text in pieces: [[xyz_0, ...], [verts_0, ...]], verts_i = 778 copies of mesh_placeholder."""
    yield "[" + json_array(xyz, DECIMALS_M) + ", ["
    for i, vertex in enumerate(mesh_placeholder(xyz)):
        row = json_array(vertex, DECIMALS_M)
        yield (", [" if i else "[") + ", ".join([row] * MESH_VERTICES) + "]"
    yield "]]"


def write_freihand_zip(path, xyz, joint_order="freihand"):
    """The Codalab upload: a zip holding pred.json, streamed (no 100 MB string in memory), reproducible bytes. The
    joints are checked as --check checks them (on the written numbers, not parsed back: that would take seconds)
    before the zip replaces ``path``. Returns the check's notes."""
    assert joint_order == "freihand", "FreiHAND's scorer reads FreiHAND order"
    info = zipfile.ZipInfo(ZIP_MEMBER, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    with atomic_write(path) as tmp:
        with zipfile.ZipFile(tmp, "w") as archive, archive.open(info, "w") as member:
            for chunk in freihand_json_chunks(xyz):
                member.write(chunk.encode())
        return check_joints(np.round(xyz, DECIMALS_M), "freihand", "freihand", str(path), NOT_FREIHAND)


def write_mp21_json_gz(path, xyz, joint_order=MP21_ORDER):
    """The course upload: gzipped JSON list N x 21 x 3 in millimetres, joints in ``joint_order``; read back and checked
    as --check checks it before it replaces ``path``. Returns the check's notes."""
    text = json_array(from_freihand(xyz * 1000.0, joint_order), DECIMALS_MM)
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as packed:
            packed.write(text.encode())
        return check_joints(read_mp21_json_gz(tmp), "mp21", joint_order, str(path), NOT_FREIHAND)


WRITERS = {"freihand": write_freihand_zip, "mp21": write_mp21_json_gz}


def upload_path(prefix, fmt):
    """freihand: PREFIX.zip; mp21: PREFIX/test_preds.json.gz, the course's name in a folder of its own."""
    return Path(f"{prefix}.zip") if fmt == "freihand" else Path(prefix) / MP21_UPLOAD


def make_folder(folder):
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"{folder} is a file where the upload's folder should be: move it away or choose another "
                        f"--out") from None


def write_outputs(prefix, record, fmt, joint_order=None, expected_ids=None):
    """Validate, then write PREFIX.npz and the upload file (each atomically and checked; ``joint_order`` default:
    the format's, DEFAULT_ORDER). Returns their paths and the upload check's notes (the joint order found, a
    depth warning)."""
    validate_predictions(record["xyz"], record["ids"], f"predictions for {prefix}", expected_ids)
    npz, upload = Path(f"{prefix}.npz"), upload_path(prefix, fmt)
    save_record(npz, record)
    make_folder(upload.parent)
    notes = WRITERS[fmt](upload, record["xyz"], joint_order or DEFAULT_ORDER[fmt])
    return npz, upload, notes


def written_line(start, fmt, joint_order, notes):
    """What the scripts print after writing: the files, the format, the joint order and the check's notes."""
    joint_note = f", {joint_order} joint order" if fmt == "mp21" else ""
    return "\n".join([f"{start} ({fmt} format{joint_note}; {notes[0]})", *notes[1:]])


# --- reading upload files back (--check) ---------------------------------------------------------------------

def as_joint_array(values, item_shape, what):
    """A JSON list -> float64 array (N, *item_shape), finite; otherwise a UserError saying what is wrong."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (ValueError, TypeError):
        raise UserError(f"{what}: entries are not all {' x '.join(map(str, item_shape))} numbers") from None
    if array.ndim != 1 + len(item_shape) or array.shape[1:] != item_shape:
        raise UserError(f"{what}: shape {array.shape}, expected (N, {', '.join(map(str, item_shape))})")
    bad = ~np.isfinite(array).all(axis=tuple(range(1, array.ndim)))
    if bad.any():
        raise UserError(f"{what}: {bad.sum()} entries hold NaN or inf (first: row {np.flatnonzero(bad)[0]})")
    return array


def read_freihand_zip(path):
    """(xyz (N, 21, 3), verts (N, 778, 3)) metres from a Codalab upload zip."""
    try:
        with zipfile.ZipFile(path) as archive:
            if ZIP_MEMBER not in archive.namelist():
                raise UserError(f"{path} holds {archive.namelist()}, not {ZIP_MEMBER}; write it with predict.py "
                                f"--format freihand")
            with archive.open(ZIP_MEMBER) as member:
                content = json.load(member)
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise UserError(f"{path} is not a readable zip file ({err}); write it again with predict.py") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: {ZIP_MEMBER} is not valid JSON ({err})") from None
    if not (isinstance(content, list) and len(content) == 2):
        raise UserError(f"{path}: {ZIP_MEMBER} must hold [xyz_list, verts_list]")
    xyz = as_joint_array(content[0], (geometry.NUM_JOINTS, 3), f"{path}: xyz_list")
    verts = as_joint_array(content[1], (MESH_VERTICES, 3), f"{path}: verts_list")
    if len(verts) != len(xyz):
        raise UserError(f"{path}: {len(xyz)} xyz entries but {len(verts)} verts entries")
    return xyz, verts


def read_mp21_json_gz(path):
    """(N, 21, 3) millimetres, in the file's joint order, from a course upload."""
    try:
        with gzip.open(path, "rt") as f:
            content = json.load(f)
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise UserError(f"{path} is not a readable gzip file ({err}); write it again with predict.py") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: the gzipped text is not valid JSON ({err})") from None
    return as_joint_array(content, (geometry.NUM_JOINTS, 3), str(path))


def expected_split(data_root, split_name, record=None):
    """The split an uploaded file must cover: --data-root / --split when given; for an .npz, the split it records
    while its data root holds a dataset; else None."""
    if data_root or split_name:
        root = existing_data_root(data_root)
        return load_split(root, split_name or submission_split(detect_layout(root)))
    if record is not None and record.get("data_root") and detect_layout(record["data_root"]) is not None:
        return load_split(record["data_root"], record["split"])
    return None


# How to fix a file whose joints are in another order than its kind expects.
ORDER_HINTS = {"npz": "prediction files hold FreiHAND order: write it again with predict.py",
               "freihand": "FreiHAND scores FreiHAND order: write it again with predict.py --format freihand",
               "mp21": f"write it again with predict.py --format mp21 --joint-order {{expected}} (the course "
                       f"scores the template's {MP21_ORDER} order)"}


def file_kind(path):
    """'npz', 'mp21' or 'freihand' from a file's name (or, for a zip under another name, its content)."""
    if path.name.endswith(".npz"):
        return "npz"
    if path.name.endswith(".json.gz"):
        return "mp21"
    if path.name.endswith(".zip") or zipfile.is_zipfile(path):
        return "freihand"
    raise UserError(f"{path}: not a .zip, .json.gz or .npz file; pass an upload or prediction file")


def expected_order(kind, joint_order, path):
    """The joint order a file of ``kind`` must hold: --joint-order for an mp21 upload (default ait), else FreiHAND."""
    if joint_order is not None and joint_order not in ORDERS:
        raise UserError(f"--joint-order {joint_order!r}: choose one of {', '.join(ORDERS)}")
    if kind != "mp21" and joint_order not in (None, "freihand"):
        raise UserError(f"--joint-order {joint_order}: {path} is a {kind} file, always in FreiHAND order; leave out "
                        f"--joint-order")
    return joint_order or DEFAULT_ORDER[kind]


def check_npz(path, data_root, split_name):
    """(the OK line's start, xyz) of a prediction file, its ids checked against the split when one is known."""
    record = load_predictions(path)
    split = expected_split(data_root, split_name, record)
    if split is not None:
        validate_predictions(record["xyz"], record["ids"], str(path), expected_ids=split.image_ids)
    where = f", matching the {split.name} split of {split.root}" if split is not None else ""
    line = f"OK: {path}: {len(record['xyz'])} predictions of split {record['split']!r} (21 x 3, metres){where}"
    return line, record["xyz"]


def read_upload(path, kind):
    """(xyz (N, 21, 3) in the file's unit and joint order, verts (N, 778, 3) or None) of an upload."""
    return (read_mp21_json_gz(path), None) if kind == "mp21" else read_freihand_zip(path)


def upload_line(path, kind, xyz, verts, data_root, split_name):
    """The OK line's start for an upload, its count checked against the split (FreiHAND's: 3960 by default)."""
    split = expected_split(data_root, split_name)
    expected, source = ((len(split), f"the {split.name} split of {split.root}") if split is not None
                        else (FREIHAND_EVAL_SIZE, "the FreiHAND evaluation set") if kind == "freihand"
                        else (None, None))
    if expected is not None and len(xyz) != expected:
        raise UserError(f"{path}: {len(xyz)} samples, expected {expected} for {source}")
    mesh = f" + {MESH_VERTICES} placeholder vertices" if verts is not None else ""
    where = f", as {source} has" if expected is not None else " (pass --data-root to check the count)"
    return f"OK: {path}: {kind} upload, {len(xyz)} samples of 21 x 3 joints{mesh}, {UNITS[kind]}{where}"


def check_file(path, data_root=None, split_name=None, joint_order=None):
    """Validate an upload (.zip, .json.gz) or prediction (.npz) file: structure, count, unit and joint order (an mp21
    upload in ``joint_order``, default ait; the others in FreiHAND order). A UserError says what is wrong, else
    returns the OK line, naming the joint order found, and a warning line for implausible depths. A folder holding
    test_preds.json.gz (an mp21 PREFIX/) stands for that file."""
    path = Path(path)
    if path.is_dir() and (path / MP21_UPLOAD).is_file():
        path = path / MP21_UPLOAD
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    kind = file_kind(path)
    order = expected_order(kind, joint_order, path)
    if kind == "npz":
        line, xyz = check_npz(path, data_root, split_name)
        notes = check_joints(xyz, kind, order, str(path), ORDER_HINTS[kind])
    else:
        xyz, verts = read_upload(path, kind)
        notes = check_joints(xyz, kind, order, str(path), ORDER_HINTS[kind])
        line = upload_line(path, kind, xyz, verts, data_root, split_name)
    return "\n".join([f"{line}; {notes[0]}", *notes[1:]])


# --- local scoring ------------------------------------------------------------------------------------------

METRIC_COLUMNS = {"pa_mpjpe_mm": "PA-MPJPE mm", "auc_0_50mm": "AUC 0-50mm", "f@5mm": "F@5mm",
                  "f@15mm": "F@15mm", "mpjpe_mm": "root-rel. MPJPE mm", "of_constant_shape": "of constant shape",
                  "camera_mpjpe_mm": "camera MPJPE mm", metrics.ROOT_OFF_KEY: f"root >{metrics.ROOT_OFF_MM / 10:g}cm"}
VARIANTS = {"reflections_allowed": "reflections allowed (FreiHAND)",
            "reflections_corrected": "reflections corrected (MP21)"}


def rows_of(available_ids, ids):
    """Row indices (N,) of image ``ids`` within ``available_ids``, and the ids not found there."""
    rows = {image_id: row for row, image_id in enumerate(available_ids)}
    missing = [i for i in ids if i not in rows]
    return np.array([rows[i] for i in ids if i in rows], dtype=np.int64), missing


def labels_for(split, ids, what):
    """Ground truth xyz (N, 21, 3) of the images ``ids`` of a labelled split."""
    rows, missing = rows_of(split.image_ids, ids)
    if missing:
        raise UserError(f"{what}: image id {missing[0]} is not in the {split.name} split of {split.root} "
                        f"({len(missing)} ids missing); pass the --data-root the predictions were made on")
    return split.xyz[rows]


def score(xyz, gt, constant_shape_m=None):
    """Metrics of predictions against ground truth (N, 21, 3) metres for both Procrustes variants; given the
    training set's constant shape (21, 3) metres, each variant also holds the constant-shape baseline's
    PA-MPJPE (mm) under that variant and the prediction's fraction of it."""
    result = {}
    for variant in VARIANTS:
        reflections = variant == "reflections_allowed"
        result[variant] = metrics.evaluate(xyz, gt, allow_reflection=reflections)
        if constant_shape_m is not None:
            baseline = metrics.constant_pa_mpjpe_mm(constant_shape_m, gt, allow_reflection=reflections)
            result[variant]["constant_shape_pa_mpjpe_mm"] = baseline
            result[variant]["of_constant_shape"] = result[variant]["pa_mpjpe_mm"] / baseline
    return result


def score_table(scores):
    """The metrics as a text table, one row per variant (with its fraction of the constant-shape baseline) and
    one for that baseline."""
    import pandas as pd
    rows = {label: {column: scores[variant].get(key) for key, column in METRIC_COLUMNS.items()}
            for variant, label in VARIANTS.items()}
    if "constant_shape_pa_mpjpe_mm" in scores["reflections_allowed"]:
        rows["constant-shape baseline"] = {
            "PA-MPJPE mm": scores["reflections_allowed"]["constant_shape_pa_mpjpe_mm"], "of constant shape": 1.0}
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=list(METRIC_COLUMNS.values()))
    return frame.to_string(float_format=lambda v: f"{v:.3f}", na_rep="-")


def report_scores(prefix, xyz, gt, constant_shape_m=None, info=None):
    """Print the score table and write PREFIX.metrics.json (``info``: what made the predictions). Returns it."""
    scores = {**(info or {}), "n": int(len(gt)), **score(xyz, gt, constant_shape_m)}
    print(f"scores on {scores['n']} labelled images:\n{score_table(scores)}")
    path = Path(f"{prefix}.metrics.json")
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(scores, indent=2))
    return path
