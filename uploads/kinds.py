"""The file kinds the scripts write and ``predict.py --check`` reads, one registry entry each: its file name, unit,
joint order, writer and reader, and the hints its messages give."""
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from core.common import UserError
from uploads import records, upload_files
from uploads.upload_files import MP21_UPLOAD

MP21_ORDER = "ait"   # the course template's joint order (its JointInfo): the course scores in it


@dataclass(frozen=True)
class FileKind:
    name: str                  # 'freihand', 'mp21' (the upload formats) or 'npz' (a prediction record)
    suffix: str                # how its file name ends
    file_name: str             # where PREFIX's file of this kind goes ({prefix} filled in)
    unit: str                  # of its joints: 'metres' or 'millimetres'
    default_order: str         # the joint order written, and expected by --check, unless --joint-order says another
    any_order: bool            # --joint-order may choose its order; else it always holds FreiHAND order
    reader: str                # who reads the file, as messages name it
    order_hint: str            # the fix of a file in another joint order ({found}, {expected} filled in)
    write: Callable            # (temp path, record, joint order) -> its joints as written (N, 21, 3), in its unit
    read: Callable             # path -> what the file holds (a record; (xyz, verts or None) for an upload)
    check: Callable            # --check: (path, kind, joint order, data root, split name) -> (OK line, notes)
    upload: bool = True        # a file to upload (a --format), not a record
    count: Optional[tuple] = None            # (samples, their source) expected when no split is given
    holds: Optional[Callable] = None         # path -> whether the content is of this kind, whatever its name

    def path(self, prefix):
        return Path(self.file_name.format(prefix=prefix))


KINDS = {kind.name: kind for kind in (
    FileKind("freihand", ".zip", "{prefix}.zip", "metres", "freihand", False, "FreiHAND",
             "FreiHAND scores FreiHAND order: write it again with predict.py --format freihand",
             upload_files.write_freihand_zip, upload_files.read_freihand_zip, upload_files.check_upload,
             count=(3960, "the FreiHAND evaluation set"), holds=zipfile.is_zipfile),
    FileKind("mp21", ".json.gz", f"{{prefix}}/{MP21_UPLOAD}", "millimetres", MP21_ORDER, True, "the course",
             f"write it again with predict.py --format mp21 --joint-order {{expected}} (the course scores the "
             f"template's {MP21_ORDER} order)",
             upload_files.write_mp21_json_gz, upload_files.read_mp21_json_gz, upload_files.check_upload),
    FileKind("npz", ".npz", "{prefix}.npz", "metres", "freihand", False, "a prediction file",
             "prediction files hold FreiHAND order: write it again with predict.py",
             records.write_record, records.load_predictions, records.check_record, upload=False))}
RECORD = KINDS["npz"]
FORMATS = tuple(name for name, kind in KINDS.items() if kind.upload)


def kind_of(path):
    """The kind of a file from its name (or, for a zip under another name, its content)."""
    for kind in KINDS.values():
        if path.name.endswith(kind.suffix):
            return kind
    for kind in KINDS.values():
        if kind.holds is not None and kind.holds(path):
            return kind
    *others, last = [kind.suffix for kind in KINDS.values()]
    raise UserError(f"{path}: not a {', '.join(others)} or {last} file; pass an upload or prediction file")
