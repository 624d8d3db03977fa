"""Decoded-image cache, the store: a split's JPEGs decoded once at the network input size into uint8 memory maps,
built, checked and opened here; what its folder holds is ``data.cache_files``'s, listing and clearing
``data.caches``'s.

    data/cache/<root name>-<split>-<S>px-<key>/
        images.npy     (N, S, S, 3) uint8: data.decoding.decode_image's pixels, bit for bit
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
"""
import json
import os
import shutil
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np

from core.common import UserError, atomic_write, fork_pool, progress, remove_stale_temps, shown, usable_cores
from core.json_files import json_text
from core.messages import logger
from data.cache_files import (BUILD_LOCK, DATA_FILES, FORMAT_VERSION, MAKE_ROOM, MANIFEST, WITHOUT, amount, amounts,
                              cache_folder, dataset_digest, disk_bytes, file_record, has_masks, hold_in_use,
                              list_caches, stale_reason, unused)
from data.decoding import decode_image, decode_mask

log = logger(__name__)

try:
    import fcntl
except ImportError:  # not POSIX: builds are not serialised; each writes its own temp files, the last one wins
    fcntl = None

CHUNK = 64                       # images per build task


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
    n, n_masks = len(split), int(has_masks(split).sum())
    return n * size * size * 3 + n_masks * size * size + n * (6 + 1) * 8 + 3 * 4096


def check_space(folder, split, size):
    """A UserError naming both numbers and the ways out when the file system that holds (or will hold) ``folder``
    has less free space than a build of ``split`` at ``size`` px writes."""
    where = Path(folder)
    while not where.exists():
        where = where.parent
    needed, free = needed_bytes(split, size), shutil.disk_usage(where).free
    if needed > free:
        needed_shown, free_shown = amounts(needed, free)
        raise UserError(f"the decoded-image cache of {len(split)} {split.name} images at {size} px needs "
                        f"{needed_shown} in {shown(Path(folder).parent)}/ and {free_shown} are free there: "
                        f"free space ({MAKE_ROOM}) {WITHOUT}")


def build(folder, split, size, digest, workers=None):
    """Decode ``split`` into ``folder`` (see the module docstring for the order of writes). Returns seconds."""
    n, size, has_mask = len(split), int(size), has_masks(split)
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


def _build_announced(folder, split, size, digest, reason, workers):
    """Build ``folder`` with a line before (what, why, how many GB of how many free, what other caches hold) and
    one after (time, GB on disk). A build that fails leaves nothing: its folder is removed."""
    prune_orphans(folder.parent)
    n_masks = int(has_masks(split).sum())
    others = [row["bytes"] for row in list_caches(folder.parent) if row["folder"] != folder]
    held = f"; {len(others)} other caches hold {amount(sum(others))}" if others else ""
    what = (f"decoding {len(split)} {split.name} images{f' and {n_masks} masks' if n_masks else ''} of "
            f"{shown(split.root)} once into {shown(folder)}/ ({size} px, {amount(needed_bytes(split, size))} "
            f"of the {amount(shutil.disk_usage(folder).free)} free{held})")
    log.info(what if reason == "not built" else f"cache {shown(folder)}/ is stale ({reason}): rebuilding; {what}")
    try:
        seconds = build(folder, split, size, digest, workers)
    except BaseException as err:
        shutil.rmtree(folder, ignore_errors=True)  # no manifest: nothing in it could be read
        if isinstance(err, OSError):
            raise UserError(f"cannot write the decoded-image cache {shown(folder)}/ ({err.strerror or err}); the "
                            f"partial cache was removed; free space ({MAKE_ROOM}), make it writable "
                            f"{WITHOUT}") from None
        raise
    log.info(f"cache {shown(folder)}/ built in {seconds:.1f} s ({len(split) / max(seconds, 1e-9):.0f} images/s): "
             f"{amount(disk_bytes(folder))} on disk; {MAKE_ROOM}")


def prune_orphans(cache_root):
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
        with unused(manifest.parent) as free:
            if free:
                shutil.rmtree(manifest.parent, ignore_errors=True)
                removed += 1
    if removed:
        log.info(f"removed {removed} decoded-image cache{'s' * (removed > 1)} of datasets that no longer exist "
                 f"from {shown(cache_root)}/")


# --- opening -------------------------------------------------------------------------------------------------

class DecodedCache:
    """A complete, checked cache: ``affines`` (N, 2, 3), ``mask_rows`` (N,) in memory; ``images`` (N, S, S, 3)
    and ``masks`` (M, S, S) (None without masks) as read-only memory maps, opened lazily in each process."""

    def __init__(self, folder, count, size):
        self.folder, self.count, self.size = Path(folder), count, size
        self._in_use = hold_in_use(self.folder)  # `--clear` leaves the cache alone while this object lives
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


def open_cache(split, size, cache_root=None, workers=None):
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
                _build_announced(folder, split, size, digest, reason, workers)
            return DecodedCache(folder, len(split), size)  # in use before the build lock is released
