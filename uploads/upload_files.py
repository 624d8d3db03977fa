"""The upload files: FreiHAND's Codalab zip and the course's json.gz, their writers and readers, and --check of
one read back. Every writer writes into a temp file and returns its joints as written, for the joint check
(``uploads.writing``) made before the temp file replaces the target."""
import gzip
import json
import zipfile
import zlib

import numpy as np

from core import geometry
from core.common import UserError
from core.json_files import json_text
from data.joints import from_freihand
from uploads.joint_checks import check_joints
from uploads.records import expected_split

ZIP_MEMBER = "pred.json"             # the file name FreiHAND's Codalab scorer reads from the zip
MP21_UPLOAD = "test_preds.json.gz"   # the name the course template writes its upload under
MESH_VERTICES = 778                  # MANO vertices per sample in pred.json
DECIMALS_M, DECIMALS_MM = 7, 4       # written precision: 0.1 micrometre either way


# --- writers ------------------------------------------------------------------------------------------------

def json_array(values, decimals):
    return json_text(np.round(np.asarray(values, np.float64), decimals).tolist())


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


def write_freihand_zip(tmp, record, joint_order="freihand"):
    """The Codalab upload: a zip holding pred.json, streamed (no 100 MB string in memory), reproducible bytes.
    Returns the joints as written (the written numbers, not parsed back: that would take seconds), metres."""
    assert joint_order == "freihand", "FreiHAND's scorer reads FreiHAND order"
    info = zipfile.ZipInfo(ZIP_MEMBER, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(tmp, "w") as archive, archive.open(info, "w") as member:
        for chunk in freihand_json_chunks(record["xyz"]):
            member.write(chunk.encode())
    return np.round(record["xyz"], DECIMALS_M)


def write_mp21_json_gz(tmp, record, joint_order):
    """The course upload: gzipped JSON list N x 21 x 3 in millimetres, joints in ``joint_order``. Returns the joints
    read back, millimetres."""
    text = json_array(from_freihand(record["xyz"] * 1000.0, joint_order), DECIMALS_MM)
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as packed:
        packed.write(text.encode())
    return read_mp21_json_gz(tmp)[0]


# --- readers ------------------------------------------------------------------------------------------------

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
    """(xyz (N, 21, 3) millimetres in the file's joint order, None: no mesh) from a course upload."""
    try:
        with gzip.open(path, "rt") as f:
            content = json.load(f)
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise UserError(f"{path} is not a readable gzip file ({err}); write it again with predict.py") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: the gzipped text is not valid JSON ({err})") from None
    return as_joint_array(content, (geometry.NUM_JOINTS, 3), str(path)), None


# --- --check ------------------------------------------------------------------------------------------------

def check_upload(path, kind, order, data_root, split_name):
    """--check of an upload: (the OK line's start, the joint check's notes); its count checked against the split,
    else against the count ``kind`` expects without one (FreiHAND's: its evaluation set)."""
    xyz, verts = kind.read(path)
    notes = check_joints(xyz, kind, order, str(path), kind.order_hint)
    split = expected_split(data_root, split_name)
    expected, source = ((len(split), f"the {split.name} split of {split.root}") if split is not None
                        else kind.count or (None, None))
    if expected is not None and len(xyz) != expected:
        raise UserError(f"{path}: {len(xyz)} samples, expected {expected} for {source}")
    mesh = f" + {MESH_VERTICES} placeholder vertices" if verts is not None else ""
    where = f", as {source} has" if expected is not None else " (pass --data-root to check the count)"
    return f"OK: {path}: {kind.name} upload, {len(xyz)} samples of 21 x 3 joints{mesh}, {kind.unit}{where}", notes
