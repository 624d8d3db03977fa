"""``predict.py --check FILE``: an upload or prediction file validated as its kind's reader would read it."""
from pathlib import Path

from core.common import UserError
from uploads.kinds import KINDS, kind_of
from uploads.naming import expected_order


def check_file(path, data_root=None, split_name=None, joint_order=None):
    """Validate an upload (.zip, .json.gz) or prediction (.npz) file: structure, count, unit and joint order (an mp21
    upload in ``joint_order``, default ait; the others in FreiHAND order). A UserError says what is wrong, else
    returns the OK line, naming the joint order found, and a warning line for implausible depths. A folder holding
    test_preds.json.gz (an mp21 PREFIX/) stands for that file. Only reads: no dataset is made."""
    path = Path(path)
    if path.is_dir() and KINDS["mp21"].path(path).is_file():
        path = KINDS["mp21"].path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    kind = kind_of(path)
    line, notes = kind.check(path, kind, expected_order(kind, joint_order, path), data_root, split_name)
    return "\n".join([f"{line}; {notes[0]}", *notes[1:]])
