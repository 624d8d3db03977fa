"""Writing a prediction: PREFIX.npz and the upload file, each written to a temp file whose joints pass the checks
--check makes before it replaces the target, so no writer leaves a file its check would reject."""

from core.common import UserError, atomic_write
from uploads.joint_checks import NOT_FREIHAND, check_joints
from uploads.kinds import KINDS, RECORD
from uploads.records import validate_predictions


def write_file(kind, path, record, joint_order):
    """``record`` as a file of ``kind`` at ``path``, joints in ``joint_order``, atomically and checked. Returns the
    check's notes (the joint order found, a depth warning)."""
    with atomic_write(path) as tmp:
        written = kind.write(tmp, record, joint_order)
        return check_joints(written, kind, joint_order, str(path), NOT_FREIHAND)


def save_record(path, record):
    """A prediction record (dict of arrays, strings and numbers) as .npz, atomically and checked. Returns the
    check's notes."""
    return write_file(RECORD, path, record, RECORD.default_order)


def make_folder(folder):
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"{folder} is a file where the upload's folder should be: move it away or choose another "
                        f"--out") from None


def write_outputs(prefix, record, fmt, joint_order=None, expected_ids=None):
    """Validate, then write PREFIX.npz and the upload file of format ``fmt`` (``joint_order`` default: the
    format's). Returns their paths and the upload check's notes (the joint order found, a depth warning)."""
    validate_predictions(record["xyz"], record["ids"], f"predictions for {prefix}", expected_ids)
    kind = KINDS[fmt]
    npz, upload = RECORD.path(prefix), kind.path(prefix)
    save_record(npz, record)
    make_folder(upload.parent)
    notes = write_file(kind, upload, record, joint_order or kind.default_order)
    return npz, upload, notes


def written_line(start, fmt, joint_order, notes):
    """What the scripts print after writing: the files, the format, the joint order and the check's notes."""
    joint_note = f", {joint_order} joint order" if KINDS[fmt].any_order else ""
    return "\n".join([f"{start} ({fmt} format{joint_note}; {notes[0]})", *notes[1:]])
