"""A decoded-image cache folder on disk (the store is ``data.cache_store``): its name and the dataset digest that key
it, the records that check its data files, its manifest, its locks, and the list of the caches in a root."""
import hashlib
import json
import os
import re
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np

from core import locations
from core.common import UserError

try:
    import fcntl
except ImportError:  # not POSIX: builds are not serialised; each writes its own temp files, the last one wins
    fcntl = None

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
IN_USE = "in_use.lock"
BUILD_LOCK = "build.lock"
DATA_FILES = ("images.npy", "masks.npy", "meta.npz")
FOLDER_NAME = re.compile(r"^(?P<dataset>.+)-(?P<split>[^-]+)-(?P<size>\d+)px-[0-9a-f]{16}$")
FINGERPRINT_BLOCKS = 32          # sampled blocks per data file, first and last included
FINGERPRINT_BLOCK_BYTES = 1 << 16
WITHOUT = "or do without the cache (train.py --set cache=false, predict.py --no-cache)"
MAKE_ROOM = ("`python -m data.caches --list` shows the caches and `--clear` removes them, or move them to a larger "
             f"disk with {locations.setting('cache')}")


def amount(n_bytes):
    """Bytes in words: GB from 1 GB up, else MB."""
    return f"{n_bytes / 1e9:.2f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:.1f} MB"


def amounts(needed, free):
    """``needed`` and ``free`` bytes in words that differ when the numbers do (exact bytes when rounding would show
    the same amount twice)."""
    words = amount(needed), amount(free)
    return words if words[0] != words[1] or needed == free else (f"{needed:,} bytes", f"{free:,} bytes")


# --- identity of a split: folder key and dataset digest ---------------------------------------------------

def has_masks(split):
    """(N,) bool: which images of ``split`` have a mask file."""
    if split.mask_paths is None:
        return np.zeros(len(split), dtype=bool)
    return np.array([p is not None for p in split.mask_paths], dtype=bool)


def cache_folder(split, size, cache_root=None):
    """The cache folder of ``split`` at ``size`` px: named by the root, split and size, keyed by the resolved
    root, layout and the split's image list (image ids and which have masks)."""
    root = Path(split.root).resolve()
    h = hashlib.sha256(f"{root}\n{split.layout}\n{split.name}\n{int(size)}\n".encode())
    h.update(np.ascontiguousarray(split.image_ids, dtype=np.int64).tobytes())
    h.update(has_masks(split).tobytes())
    cache_root = cache_root or locations.root("cache")
    return Path(cache_root) / f"{root.name}-{split.name}-{int(size)}px-{h.hexdigest()[:16]}"


def dataset_digest(split, size):
    """sha256 over what the cache is built from: format version, resolved root, split, size, image count and
    every image's and mask's (size, mtime_ns). Costs one stat per file."""
    h = hashlib.sha256(f"{FORMAT_VERSION}\n{Path(split.root).resolve()}\n{split.name}\n{int(size)}\n"
                       f"{len(split)}\n".encode())
    for paths in (split.image_paths, [p for p in split.mask_paths or () if p is not None]):
        stats = np.empty((len(paths), 2), dtype=np.int64)                      # (n, 2) bytes, mtime_ns
        for i, path in enumerate(paths):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                raise UserError(f"image {path} is missing; re-extract the dataset") from None
            stats[i] = st.st_size, st.st_mtime_ns
        h.update(stats.tobytes())
    return h.hexdigest()


# --- data files: records written at build completion and checked on open --------------------------------

def sampled_fingerprint(path, n_bytes):
    """sha256 of FINGERPRINT_BLOCKS blocks spread evenly over the file (the whole file when it is small)."""
    h = hashlib.sha256(str(n_bytes).encode())
    span = max(0, n_bytes - FINGERPRINT_BLOCK_BYTES)
    offsets = sorted({span * k // (FINGERPRINT_BLOCKS - 1) for k in range(FINGERPRINT_BLOCKS)})
    with open(path, "rb") as f:
        for offset in offsets:
            f.seek(offset)
            h.update(f.read(FINGERPRINT_BLOCK_BYTES))
    return h.hexdigest()


def file_record(path):
    st = os.stat(path)
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "fingerprint": sampled_fingerprint(path, st.st_size)}


def stale_reason(folder, digest, count):
    """Why the cache in ``folder`` must not be read (one phrase), or None when it is complete and unchanged."""
    path = folder / MANIFEST
    if not path.is_file():
        return "not built"
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "its manifest is unreadable"
    if manifest.get("format") != FORMAT_VERSION:
        return f"it has format {manifest.get('format')}, this version writes {FORMAT_VERSION}"
    if manifest.get("count") != count:
        return f"the split now has {count} images, the cache {manifest.get('count')}"
    if manifest.get("dataset") != digest:
        return "an image or mask of the dataset changed (size or modification time) since the build"
    for name, record in manifest["files"].items():
        if not (folder / name).is_file():
            return f"{name} is missing"
        st = os.stat(folder / name)
        if st.st_size != record["bytes"]:
            return f"{name} is {st.st_size} bytes, {record['bytes']} when built (truncated or replaced)"
        if st.st_mtime_ns != record["mtime_ns"]:
            return f"{name} was modified after the build"
        if sampled_fingerprint(folder / name, st.st_size) != record["fingerprint"]:
            return f"{name}'s content differs from the build"
    return None


# --- a cache folder's manifest, size and locks -----------------------------------------------------------

def disk_bytes(folder):
    """Bytes the files in ``folder`` take on disk (allocated blocks: a sparse file counts what it holds)."""
    return sum(p.stat().st_blocks * 512 for p in Path(folder).iterdir() if p.is_file())


def read_manifest(folder):
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):  # not built, being replaced, or damaged
        return None


def hold_in_use(folder):
    """Mark the cache in ``folder`` as used now (the mtime of IN_USE) and in use by this process until the returned
    file is closed (a shared lock on it, which ``clear_caches`` respects)."""
    handle = open(folder / IN_USE, "a")
    os.utime(folder / IN_USE)
    if fcntl is not None:
        fcntl.flock(handle, fcntl.LOCK_SH)
    return handle


@contextmanager
def unused(folder):
    """Yields True, holding the folder's locks, when no process builds or reads the cache in ``folder``."""
    with ExitStack() as held:
        for name in (BUILD_LOCK, IN_USE):
            if fcntl is None or not (folder / name).is_file():
                continue
            handle = held.enter_context(open(folder / name, "a"))
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
        yield True


def list_caches(cache_root=None):
    """One dict per cache folder in ``cache_root`` (not a link to a folder elsewhere: --clear removes only what lies
    in the root): folder, dataset (its root), split, size, images (None when the build is incomplete), bytes on
    disk, last_used (POSIX time: the last open, else the build)."""
    rows = []
    for folder in sorted(Path(cache_root or locations.root("cache")).glob("*")):
        match = FOLDER_NAME.match(folder.name)
        if match is None or folder.is_symlink() or not folder.is_dir():  # a link is not a cache this module made
            continue
        manifest = read_manifest(folder)
        stamp = next((folder / name for name in (IN_USE, MANIFEST) if (folder / name).is_file()), folder)
        rows.append({"folder": folder, "dataset": manifest["root"] if manifest else match["dataset"],
                     "split": match["split"], "size": int(match["size"]),
                     "images": manifest["count"] if manifest else None, "bytes": disk_bytes(folder),
                     "last_used": stamp.stat().st_mtime})
    return rows
