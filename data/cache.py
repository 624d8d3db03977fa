"""Decoded-image cache: a split's JPEGs decoded once at the network input size into uint8 memory maps.

    data/cache/<root name>-<split>-<S>px-<key>/
        images.npy     (N, S, S, 3) uint8: data.dataset.decode_image's pixels, bit for bit
        masks.npy      (M, S, S) uint8 in {0, 1}: one per image that has a mask (absent when none has)
        meta.npz       affines (N, 2, 3) float64 original -> input; mask_rows (N,) int64 row of masks.npy or -1
        manifest.json  written last: what the cache was built from, and each data file's bytes, mtime_ns and a
                       fingerprint of sampled blocks
        build.lock     serialises builds of this folder (DDP ranks, parallel runs)
        in_use.lock    held (shared) by every process that reads the cache; its mtime is the cache's last use

The folder name keys the resolved dataset root, split name, size and the split's image list (so a subset gets
its own cache). The manifest's ``dataset`` digest covers every source image's and mask's size and mtime_ns,
the image count and FORMAT_VERSION: a replaced or touched image rebuilds the cache. On open, each data file
is checked against the manifest (size, mtime_ns, sampled-block fingerprint): a truncated, altered or replaced
cache file rebuilds the cache, announced in one line saying why; it is never read. A build computes the bytes it
will write and refuses, in one line, when the file system has fewer free (before it creates anything); it
deletes the old manifest and data files first, writes temp files, ``os.replace``s them into place and writes the
manifest last, so a killed build leaves no manifest and is rebuilt on the next open; a build that fails (a full
disk, a corrupt image, Ctrl-C) removes its folder. Building a cache deletes the caches of datasets that no
longer exist (not one a process still reads). A process that opens a cache while ``--clear`` removes it makes it
again.

    python -m data.cache --list                       # every cache: dataset, split, size, images, GB, last used
    python -m data.cache --clear --all                # or --dataset NAME and/or --unused-days N (both must hold)
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import time
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from core import locations
from core.common import (UserError, atomic_write, check_minimums, cli, fork_pool, progress,
                         remove_stale_temps, shown, usable_cores)
from core.json_files import json_text
from data.dataset import HandDataset, decode_image, decode_mask, input_labels

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
CHUNK = 64                       # images per build task
WITHOUT = "or do without the cache (train.py --set cache=false, predict.py --no-cache)"
MAKE_ROOM = ("`python -m data.cache --list` shows the caches and `--clear` removes them, or move them to a larger "
             f"disk with {locations.setting('cache')}")


def _amount(n_bytes):
    """Bytes in words: GB from 1 GB up, else MB."""
    return f"{n_bytes / 1e9:.2f} GB" if n_bytes >= 1e9 else f"{n_bytes / 1e6:.1f} MB"


def _amounts(needed, free):
    """``needed`` and ``free`` bytes in words that differ when the numbers do (exact bytes when rounding would show
    the same amount twice)."""
    words = _amount(needed), _amount(free)
    return words if words[0] != words[1] or needed == free else (f"{needed:,} bytes", f"{free:,} bytes")


# --- identity of a split: folder key and dataset digest ---------------------------------------------------

def _has_mask(split):
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
    h.update(_has_mask(split).tobytes())
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


# --- building -------------------------------------------------------------------------------------------------

@contextmanager
def _build_lock(folder):
    """Exclusive lock on ``folder``/build.lock (no-op where fcntl is missing). Yields False when the folder was
    removed while this process waited for the lock (``--clear``, a failed build): the lock is then on a deleted
    file and guards nothing."""
    with open(folder / BUILD_LOCK, "a") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield _same_file(f, folder / BUILD_LOCK)
        finally:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_UN)


def _same_file(handle, path):
    """Whether the open file ``handle`` is still the file at ``path``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(handle.fileno())
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _decode_chunk(task):
    """Worker: decode images [start, start + len(image_paths)) and their masks, write them at their rows of the
    temp files. Returns (start, affines (n, 2, 3))."""
    start, image_paths, mask_paths, mask_start, size, files = task
    pixels, affines = zip(*(decode_image(p, size) for p in image_paths))
    _write_rows(files["images"], start, np.stack(pixels))                    # (n, S, S, 3)
    if mask_paths:
        _write_rows(files["masks"], mask_start, np.stack([decode_mask(p, size) for p in mask_paths]))
    return start, np.stack(affines)


def _write_rows(file, first_row, rows):
    """Write ``rows`` (n, ...) uint8 at row ``first_row`` of the .npy ``file`` = (path, header bytes)."""
    path, header = file
    with open(path, "r+b") as f:
        f.seek(header + first_row * rows[0].nbytes)
        f.write(np.ascontiguousarray(rows).data)


def _new_npy(path, shape):
    """An all-zero uint8 .npy of ``shape`` (sparse until written); returns (path, header bytes)."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    header = array.offset
    del array
    return str(path), header


def _tasks(split, size, has_mask, files):
    """Chunks of CHUNK images: (first row, image paths, their mask paths, first mask row, size, files)."""
    masks_before = np.concatenate([[0], np.cumsum(has_mask)])                # (N + 1,) masks in rows [0, i)
    for start in range(0, len(split), CHUNK):
        stop = min(start + CHUNK, len(split))
        masks = [split.mask_paths[i] for i in range(start, stop) if has_mask[i]]
        yield start, split.image_paths[start:stop], masks, int(masks_before[start]), size, files


def _decode_all(split, size, has_mask, files, workers, desc):
    """Decode every image into the temp files, in parallel; returns affines (N, 2, 3). A worker's UserError
    (corrupt or missing JPEG) arrives as the same one-line UserError."""
    affines = np.empty((len(split), 2, 3), dtype=np.float64)
    tasks = list(_tasks(split, size, has_mask, files))
    workers = max(1, min(workers or usable_cores(), len(tasks)))
    with progress(total=len(split), desc=desc, unit="img") as bar:
        def record(result):
            start, chunk = result
            affines[start:start + len(chunk)] = chunk
            bar.update(len(chunk))
        if workers == 1:
            for task in tasks:
                record(_decode_chunk(task))
            return affines
        with fork_pool(workers) as pool:
            try:
                for result in pool.imap_unordered(_decode_chunk, tasks):
                    record(result)
            except UserError as err:
                raise UserError(str(err)) from None  # without the worker's traceback
    return affines


def needed_bytes(split, size):
    """What a build of ``split`` at ``size`` px writes: the pixels, the masks, the affines and mask rows, and a
    little for the file headers and the manifest."""
    n, n_masks = len(split), int(_has_mask(split).sum())
    return n * size * size * 3 + n_masks * size * size + n * (6 + 1) * 8 + 3 * 4096


def check_space(folder, split, size):
    """A UserError naming both numbers and the ways out when the file system that holds (or will hold) ``folder``
    has less free space than a build of ``split`` at ``size`` px writes."""
    where = Path(folder)
    while not where.exists():
        where = where.parent
    needed, free = needed_bytes(split, size), shutil.disk_usage(where).free
    if needed > free:
        needed_shown, free_shown = _amounts(needed, free)
        raise UserError(f"the decoded-image cache of {len(split)} {split.name} images at {size} px needs "
                        f"{needed_shown} in {shown(Path(folder).parent)}/ and {free_shown} are free there: "
                        f"free space ({MAKE_ROOM}) {WITHOUT}")


def build(folder, split, size, digest, workers=None):
    """Decode ``split`` into ``folder`` (see the module docstring for the order of writes). Returns seconds."""
    n, size, has_mask = len(split), int(size), _has_mask(split)
    n_masks = int(has_mask.sum())
    (folder / MANIFEST).unlink(missing_ok=True)             # from here on the folder never reads as complete
    remove_stale_temps(folder)                              # left by a killed build (we hold the build lock)
    for name in DATA_FILES:                                 # stale: never read again, and their room is needed
        (folder / name).unlink(missing_ok=True)
    check_space(folder, split, size)
    names = [name for name in DATA_FILES if name != "masks.npy" or n_masks]
    started = time.perf_counter()
    with ExitStack() as replaced_on_success:      # each file replaces its target when all are written
        tmp = {name: replaced_on_success.enter_context(atomic_write(folder / name)) for name in names}
        files = {"images": _new_npy(tmp["images.npy"], (n, size, size, 3))}
        if n_masks:
            files["masks"] = _new_npy(tmp["masks.npy"], (n_masks, size, size))
        affines = _decode_all(split, size, has_mask, files, workers, desc=f"decoding {split.name}")
        mask_rows = np.where(has_mask, np.cumsum(has_mask) - 1, -1).astype(np.int64)
        with open(tmp["meta.npz"], "wb") as f:
            np.savez(f, affines=affines, mask_rows=mask_rows)
    seconds = time.perf_counter() - started
    manifest = {"format": FORMAT_VERSION, "root": str(Path(split.root).resolve()), "layout": split.layout,
                "split": split.name, "size": size, "count": n, "masks": n_masks, "dataset": digest,
                "seconds": round(seconds, 2), "files": {name: file_record(folder / name) for name in names}}
    with atomic_write(folder / MANIFEST) as tmp_manifest:
        tmp_manifest.write_text(json_text(manifest, indent=1))
    return seconds


def _build_announced(folder, split, size, digest, reason, workers, announce):
    """Build ``folder`` with a line before (what, why, how many GB of how many free, what other caches hold) and
    one after (time, GB on disk). A build that fails leaves nothing: its folder is removed."""
    prune_orphans(folder.parent, announce)
    n_masks = int(_has_mask(split).sum())
    others = [row["bytes"] for row in list_caches(folder.parent) if row["folder"] != folder]
    held = f"; {len(others)} other caches hold {_amount(sum(others))}" if others else ""
    what = (f"decoding {len(split)} {split.name} images{f' and {n_masks} masks' if n_masks else ''} of "
            f"{shown(split.root)} once into {shown(folder)}/ ({size} px, {_amount(needed_bytes(split, size))} "
            f"of the {_amount(shutil.disk_usage(folder).free)} free{held})")
    announce(what if reason == "not built" else f"cache {shown(folder)}/ is stale ({reason}): rebuilding; {what}")
    try:
        seconds = build(folder, split, size, digest, workers)
    except BaseException as err:
        shutil.rmtree(folder, ignore_errors=True)  # no manifest: nothing in it could be read
        if isinstance(err, OSError):
            raise UserError(f"cannot write the decoded-image cache {shown(folder)}/ ({err.strerror or err}); the "
                            f"partial cache was removed; free space ({MAKE_ROOM}), make it writable "
                            f"{WITHOUT}") from None
        raise
    announce(f"cache {shown(folder)}/ built in {seconds:.1f} s ({len(split) / max(seconds, 1e-9):.0f} images/s): "
             f"{_amount(_disk_bytes(folder))} on disk; {MAKE_ROOM}")


def prune_orphans(cache_root, announce=print):
    """Delete the caches under ``cache_root`` whose dataset root no longer exists (a moved dataset, a test's
    temporary folder): they can never be built again. One that a process still reads or builds is kept."""
    removed = 0
    for manifest in Path(cache_root).glob(f"*/{MANIFEST}"):
        try:
            root = json.loads(manifest.read_text()).get("root")
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):  # being replaced, or unreadable: not ours to judge
            continue
        if not root or Path(root).exists() or manifest.parent.is_symlink():
            continue
        with _unused(manifest.parent) as free:
            if free:
                shutil.rmtree(manifest.parent, ignore_errors=True)
                removed += 1
    if removed:
        announce(f"removed {removed} decoded-image cache{'s' * (removed > 1)} of datasets that no longer exist "
                 f"from {shown(cache_root)}/")


# --- opening -------------------------------------------------------------------------------------------------

class DecodedCache:
    """A complete, checked cache: ``affines`` (N, 2, 3), ``mask_rows`` (N,) in memory; ``images`` (N, S, S, 3)
    and ``masks`` (M, S, S) (None without masks) as read-only memory maps, opened lazily in each process."""

    def __init__(self, folder, count, size):
        self.folder, self.count, self.size = Path(folder), count, size
        self._in_use = _hold_in_use(self.folder)  # `--clear` leaves the cache alone while this object lives
        with np.load(self.folder / "meta.npz") as meta:
            self.affines, self.mask_rows = meta["affines"], meta["mask_rows"]
        self._maps = None

    def _open(self):
        images = np.load(self.folder / "images.npy", mmap_mode="r")
        masks = np.load(self.folder / "masks.npy", mmap_mode="r") if (self.mask_rows >= 0).any() else None
        if images.shape != (self.count, self.size, self.size, 3):
            raise RuntimeError(f"{self.folder / 'images.npy'} holds {images.shape}, expected "
                               f"{(self.count, self.size, self.size, 3)}")
        self._maps = images, masks

    @property
    def images(self):
        if self._maps is None:
            self._open()
        return self._maps[0]

    @property
    def masks(self):
        if self._maps is None:
            self._open()
        return self._maps[1]

    def __getstate__(self):  # to a loader worker: the folder and small arrays, never the mapped pixels
        return {**self.__dict__, "_maps": None, "_in_use": None}


def open_cache(split, size, cache_root=None, workers=None, announce=print):
    """The checked cache of ``split`` at ``size`` px; built first when missing, incomplete or stale (one line
    says which and why, one what it took). ``workers``: build processes (default: all cores)."""
    size = int(size)
    folder = cache_folder(split, size, cache_root)
    digest = dataset_digest(split, size)
    while True:
        if not folder.exists():
            check_space(folder, split, size)  # before anything is made
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create the decoded-image cache {folder} ({err.strerror}); make it writable "
                            f"{WITHOUT}") from None
        with _build_lock(folder) as current:
            if not current:  # removed while this process waited: make it again
                continue
            reason = stale_reason(folder, digest, len(split))
            if reason is not None:
                _build_announced(folder, split, size, digest, reason, workers, announce)
            return DecodedCache(folder, len(split), size)  # in use before the build lock is released


def _hold_in_use(folder):
    """Mark the cache in ``folder`` as used now (the mtime of IN_USE) and in use by this process until the returned
    file is closed (a shared lock on it, which ``clear_caches`` respects)."""
    handle = open(folder / IN_USE, "a")
    os.utime(folder / IN_USE)
    if fcntl is not None:
        fcntl.flock(handle, fcntl.LOCK_SH)
    return handle


# --- listing and clearing ----------------------------------------------------------------------------------------

def _disk_bytes(folder):
    """Bytes the files in ``folder`` take on disk (allocated blocks: a sparse file counts what it holds)."""
    return sum(p.stat().st_blocks * 512 for p in Path(folder).iterdir() if p.is_file())


def _manifest(folder):
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):  # not built, being replaced, or damaged
        return None


def list_caches(cache_root=None):
    """One dict per cache folder in ``cache_root`` (not a link to a folder elsewhere: --clear removes only what lies
    in the root): folder, dataset (its root), split, size, images (None when the build is incomplete), bytes on
    disk, last_used (POSIX time: the last open, else the build)."""
    rows = []
    for folder in sorted(Path(cache_root or locations.root("cache")).glob("*")):
        match = FOLDER_NAME.match(folder.name)
        if match is None or folder.is_symlink() or not folder.is_dir():  # a link is not a cache this module made
            continue
        manifest = _manifest(folder)
        stamp = next((folder / name for name in (IN_USE, MANIFEST) if (folder / name).is_file()), folder)
        rows.append({"folder": folder, "dataset": manifest["root"] if manifest else match["dataset"],
                     "split": match["split"], "size": int(match["size"]),
                     "images": manifest["count"] if manifest else None, "bytes": _disk_bytes(folder),
                     "last_used": stamp.stat().st_mtime})
    return rows


def format_caches(rows, cache_root):
    """The table ``python -m data.cache --list`` prints."""
    if not rows:
        return f"no decoded-image caches in {shown(cache_root)}/"
    now, width = time.time(), max(len("dataset"), *(len(str(shown(row["dataset"]))) for row in rows))
    lines = [f"{'dataset':<{width}} {'split':<10} {'size':>5} {'images':>10} {'GB':>8}  last used"]
    for row in rows:
        hours = (now - row["last_used"]) / 3600
        ago = f"{hours:.0f} h ago" if hours < 48 else f"{hours / 24:.0f} days ago"
        images = f"{row['images']}" if row["images"] is not None else "incomplete"
        lines.append(f"{str(shown(row['dataset'])):<{width}} {row['split']:<10} {row['size']:>5} {images:>10} "
                     f"{row['bytes'] / 1e9:>8.2f}  {datetime.fromtimestamp(row['last_used']):%Y-%m-%d %H:%M} ({ago})")
    lines.append(f"{len(rows)} cache{'s' * (len(rows) > 1)}, {sum(r['bytes'] for r in rows) / 1e9:.2f} GB in "
                 f"{shown(cache_root)}/")
    return "\n".join(lines)


def _selected(row, dataset, unused_days):
    if dataset is not None and dataset not in (Path(row["dataset"]).name, str(row["dataset"])) and \
            Path(dataset).resolve() != Path(row["dataset"]).resolve():
        return False
    return unused_days is None or time.time() - row["last_used"] >= unused_days * 86400


@contextmanager
def _unused(folder):
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


def clear_caches(cache_root=None, dataset=None, unused_days=None, announce=print):
    """Remove the caches of ``dataset`` (its folder name or path; None: any) not used for ``unused_days`` days
    (None: whenever used), except those a process builds or reads now. Returns the bytes freed."""
    cache_root = cache_root or locations.root("cache")
    removed, freed, busy = 0, 0, []
    for row in list_caches(cache_root):
        if not _selected(row, dataset, unused_days):
            continue
        with _unused(row["folder"]) as free:
            if not free:
                busy.append(row["folder"].name)
                continue
            shutil.rmtree(row["folder"])
        removed, freed = removed + 1, freed + row["bytes"]
    announce(f"removed {removed} cache{'s' * (removed != 1)} ({_amount(freed)}) from {shown(cache_root)}/"
             + (f"; kept {len(busy)} in use by a running process: {', '.join(busy)}" if busy else ""))
    return freed


# --- the Dataset ---------------------------------------------------------------------------------------------

def _empty(shape):
    """An uninitialised uint8 tensor; inside a loader worker it is allocated in shared memory, so handing the
    batch to the main process copies nothing (as torch's default_collate does)."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(int(np.prod(shape)))
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)


class CachedHandDataset(torch.utils.data.Dataset):
    """HandDataset's samples, read from the decoded cache a batch at a time.

    ``__getitems__(indices)`` returns the batch dict directly (make_loader passes it through): one sorted
    fancy-index into the memory map per array, labels precomputed once for the split with the codec. The
    batch's ``image`` (B, 3, S, S) uint8 is a channels_last view of the cached (B, S, S, 3) rows (no CPU
    transpose); other keys, shapes and dtypes as HandDataset documents, batched.
    """
    batched = True

    def __init__(self, split, img_size, cache_root=None, workers=None, announce=print):
        self.split, self.size = split, int(img_size)
        self.cache = open_cache(split, self.size, cache_root, workers, announce)
        self.labels = {"has_mask": torch.from_numpy(self.cache.mask_rows >= 0),     # (N, ...) tensors
                       **input_labels(split, np.arange(len(split)), self.cache.affines)}

    def __len__(self):
        return len(self.split)

    def __getitem__(self, i):
        return {key: value[0] for key, value in self.__getitems__([i]).items()}

    def __getitems__(self, indices):
        rows = np.asarray(indices, dtype=np.int64)                     # (B,)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"indices out of range for {len(self)} samples")
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]                                          # ascending: one sequential pass
        b, s = len(rows), self.size
        image = _empty((b, s, s, 3))
        image.numpy()[order] = self.cache.images[ordered]              # (B, S, S, 3) in the requested order
        mask = _empty((b, s, s))
        mask_rows = self.cache.mask_rows[ordered]
        have = mask_rows >= 0
        mask.numpy()[order[~have]] = 0                                 # numpy copies: no thread-pool wake-ups
        if have.any():
            mask.numpy()[order[have]] = self.cache.masks[mask_rows[have]]
        picked = torch.from_numpy(rows)
        return {"image": image.permute(0, 3, 1, 2), "mask": mask,
                **{key: value[picked] for key, value in self.labels.items()}}


def make_dataset(split, img_size, cache=False, announce=print, cache_root=None):
    """The Dataset of ``split`` at ``img_size``: from the decoded uint8 cache (built on first use, see
    ``data.cache``) when ``cache``, else decoding the JPEGs per sample. Both give the samples documented in
    ``HandDataset``; the cached one serves whole batches (``__getitems__``)."""
    if not cache:
        return HandDataset(split, img_size)
    return CachedHandDataset(split, img_size, announce=announce, cache_root=cache_root)


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description="List or clear the decoded-image caches (data/cache/): one per "
                                                 "dataset, split and image size.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--list", action="store_true", help="print every cache: dataset, split, size, images, GB, "
                                                            "last used")
    action.add_argument("--clear", action="store_true", help="remove the caches chosen by --all, --dataset and "
                                                             "--unused-days (caches in use are kept)")
    parser.add_argument("--all", action="store_true", help="with --clear: every cache")
    parser.add_argument("--dataset", help="with --clear: the caches of this dataset (its folder name or path)")
    parser.add_argument("--unused-days", type=float, help="with --clear: the caches not used for this many days")
    locations.add_flags(parser, "cache")
    args = parser.parse_args(argv)
    locations.apply_flags(args, "cache")
    check_minimums(args, {"unused_days": 0})
    chosen = args.dataset is not None or args.unused_days is not None
    if args.list and (args.all or chosen):
        raise UserError("--all, --dataset and --unused-days choose what --clear removes; --list shows every cache")
    if args.clear and args.all == chosen:
        raise UserError("say which caches --clear removes: --all, or --dataset NAME and/or --unused-days N "
                        "(`python -m data.cache --list` shows them)")
    if args.list:
        print(format_caches(list_caches(), locations.root("cache")))
    else:
        clear_caches(locations.root("cache"), args.dataset, args.unused_days)


if __name__ == "__main__":
    main()
