"""What is derived from a dataset (the validation split) is kept where the project writes, never in the dataset's
folder (read-only on Kaggle's /kaggle/input and on a cluster's shared datasets):

    <cache root>/datasets/<root name>-<key>/val_split.json

``key`` covers the resolved root and the content of its annotation files (*_K.json, *_xyz.json, *_scale.json),
so two data roots never share a folder, and a dataset whose annotations change gets a new one."""
import functools
import hashlib
import json
import os
import shutil
from pathlib import Path

from core import locations
from core.common import file_sha256

DERIVED_FOLDER = "datasets"
ANNOTATION_PATTERNS = ("*_K.json", "*_xyz.json", "*_scale.json")


def dataset_key(root):
    """16 hex digits naming the dataset at ``root``: its resolved path and its annotation files' bytes."""
    root = Path(root).resolve()
    files = sorted(p for pattern in ANNOTATION_PATTERNS for p in root.glob(pattern) if p.is_file())
    stamps = tuple((p.name, *_stamp(p)) for p in files)
    return _key(str(root), stamps)


def _stamp(path):
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=16)
def _key(root, stamps):
    """Hashes the files once per process while their sizes and mtimes stay (``stamps``: (name, bytes, mtime_ns))."""
    h = hashlib.sha256(f"{root}\n".encode())
    for name, _, _ in stamps:
        h.update(f"{name}\n{file_sha256(Path(root) / name)}\n".encode())
    return h.hexdigest()[:16]


def derived_folder(root):
    """The folder (not created here) that holds what is derived from the dataset at ``root``."""
    root = Path(root).resolve()
    return locations.root("cache") / DERIVED_FOLDER / f"{root.name}-{dataset_key(root)}"


def prune_gone():
    """Delete the derived folders whose dataset no longer exists (a moved dataset, a test's temporary folder):
    its key can never be made again. A folder whose records name no data root is kept."""
    for folder in (locations.root("cache") / DERIVED_FOLDER).glob("*"):
        roots = set()
        for record in folder.glob("*.json"):
            try:
                roots.add(json.loads(record.read_text()).get("data_root"))
            except (OSError, ValueError, AttributeError):  # unreadable or being replaced: not ours to judge
                roots.add(None)
        if roots and None not in roots and not any(Path(r).exists() for r in roots):
            shutil.rmtree(folder, ignore_errors=True)
