"""The decoded-image cache: the same samples as the JPEG path, rebuilt (never read) when the dataset or a cache
file changed, nothing read after a killed build, one-line errors from build workers; the batched loader."""
import errno
import gc
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from core.common import PROJECT_ROOT, UserError
from data import cache_files, cache_store, caches
from data.cache_files import MANIFEST, cache_folder
from data.cache_store import open_cache
from data.dataset import CachedHandDataset, HandDataset, make_dataset
from data.loader import make_loader
from data.readers import load_split
from tests.markers import write_marker_dataset
from tests.scripts import run_main

SIZE = 64


@pytest.fixture(scope="module")
def markers(tmp_path_factory):
    """Non-square images (letterboxed into the input), 2 versions: half the training images have a mask."""
    return write_marker_dataset(tmp_path_factory.mktemp("fh"), n=12, versions=2, size=(240, 200), seed=7)


class Announced:
    """The cache's messages so far in a test as a list, but the build times (test_a_build_announces_what_it_takes)."""

    def __init__(self, said):
        self.said = said

    def lines(self):
        return [line for line in self.said() if " built in " not in line]

    def __len__(self):
        return len(self.lines())

    def __getitem__(self, index):
        return self.lines()[index]


@pytest.fixture
def fresh(marker_set_2_versions, copy_of, tmp_path, said):
    """A private copy of a small dataset and an empty cache root: (root, cache_root, lines announced)."""
    return copy_of(marker_set_2_versions), tmp_path / "cache", Announced(said)


def assert_same_samples(expected, actual):
    assert list(expected) == list(actual)
    for key in expected:
        a, b = expected[key], actual[key]
        assert a.dtype == b.dtype and a.shape == b.shape, key
        assert torch.equal(a, b) or (key == "bone_length" and a.isnan().all() and b.isnan().all()), key


def assert_matches_jpegs(split, dataset):
    jpeg = HandDataset(split, dataset.size)
    for i in range(len(split)):
        assert_same_samples(jpeg[i], dataset[i])


def open_dataset(root, cache_root, split="train", workers=1):
    """The cached dataset, built on first use (what it says: the fixture ``fresh``'s lines)."""
    return CachedHandDataset(load_split(root, split), SIZE, cache_root=cache_root, workers=workers)


# --- same samples ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("split", ["train", "evaluation"])
def test_cache_returns_exactly_the_jpeg_samples(markers, tmp_path, split):
    """Pixels, masks, K, uvd, xyz, ids: bit for bit what decoding the JPEGs gives, sample by sample."""
    data = load_split(markers, split)
    dataset = make_dataset(data, SIZE, cache=True, cache_root=tmp_path)
    assert isinstance(dataset, CachedHandDataset) and isinstance(make_dataset(data, SIZE, cache=False), HandDataset)
    assert_matches_jpegs(data, dataset)
    if split == "train":
        assert 0 < int(dataset.labels["has_mask"].sum()) < len(dataset)


def test_loader_batches_equal_the_jpeg_loader_shuffled_and_sharded(markers, tmp_path):
    """Same (seed, epoch) shuffle, same DDP shards, same batch contents; workers in shared memory too."""
    data = load_split(markers, "train")
    cached = CachedHandDataset(data, SIZE, cache_root=tmp_path)
    for rank in range(2):
        loaders = [make_loader(d, 4, train=True, workers=w, seed=3, rank=rank, world_size=2)
                   for d, w in ((HandDataset(data, SIZE), 0), (cached, 0), (cached, 1))]
        for loader in loaders:
            loader.sampler.set_epoch(5)
        jpeg, *from_cache = [list(loader) for loader in loaders]
        assert len(jpeg) == len(data) // 2 // 4
        for batches in from_cache:
            for a, b in zip(jpeg, batches, strict=True):
                assert_same_samples(a, b)
    batch = next(iter(make_loader(cached, 4, train=False, workers=0)))
    assert batch["image"].shape == (4, 3, SIZE, SIZE)
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(batch["id"].numpy(), data.image_ids[:4])


# --- rebuilt, never read ---------------------------------------------------------------------------------------

def test_reopening_an_unchanged_cache_does_not_rebuild(fresh):
    root, cache_root, lines = fresh
    open_dataset(root, cache_root)
    open_dataset(root, cache_root)
    assert len(lines) == 1 and lines[0].startswith("decoding 10 train images and 5 masks")


def _replace_image(path):
    """Another picture at ``path``: a different size and content."""
    Image.fromarray(np.full((180, 260, 3), (200, 40, 90), np.uint8)).save(path, quality=90)


def _touch(path):
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))


@pytest.mark.parametrize("change", [_replace_image, _touch], ids=["replaced", "touched"])
def test_changed_dataset_rebuilds(fresh, change):
    root, cache_root, lines = fresh
    open_dataset(root, cache_root)
    change(root / "training/rgb/00000007.jpg")
    dataset = open_dataset(root, cache_root)
    assert len(lines) == 2 and "is stale (an image or mask of the dataset changed" in lines[1]
    assert_matches_jpegs(load_split(root, "train"), dataset)


def _cache_file(root, cache_root, name):
    return cache_folder(load_split(root, "train"), SIZE, cache_root) / name


def _alter(path, restore_mtime):
    """Flip the first pixel's bytes in place (inside the first fingerprint block); optionally keep the mtime."""
    st = os.stat(path)
    header = np.load(path, mmap_mode="r").offset if path.suffix == ".npy" else 64
    with open(path, "r+b") as f:
        f.seek(header)
        old = f.read(16)
        f.seek(header)
        f.write(bytes(255 - b for b in old))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns if restore_mtime else st.st_mtime_ns + 10 ** 9))


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)


@pytest.mark.parametrize("name, damage, reason", [
    ("images.npy", lambda p: _alter(p, restore_mtime=False), "images.npy was modified after the build"),
    ("images.npy", lambda p: _alter(p, restore_mtime=True), "images.npy's content differs from the build"),
    ("images.npy", _truncate, "(truncated or replaced)"),
    ("masks.npy", _truncate, "(truncated or replaced)"),
    ("meta.npz", lambda p: _alter(p, restore_mtime=False), "meta.npz was modified after the build"),
    ("images.npy", os.unlink, "images.npy is missing"),
], ids=["altered", "altered-same-mtime", "truncated", "masks-truncated", "meta-altered", "deleted"])
def test_changed_cache_file_is_rebuilt_not_read(fresh, name, damage, reason):
    root, cache_root, lines = fresh
    open_dataset(root, cache_root)
    damage(_cache_file(root, cache_root, name))
    dataset = open_dataset(root, cache_root)
    assert len(lines) == 2 and reason in lines[1] and "rebuilding" in lines[1], lines
    assert_matches_jpegs(load_split(root, "train"), dataset)
    assert cache_files.stale_reason(dataset.cache.folder, cache_files.dataset_digest(dataset.split, SIZE),
                                     len(dataset)) is None


@pytest.mark.slow
def test_killed_build_leaves_nothing_read_as_complete(fresh):
    """SIGKILL a build (a rebuild, so an older complete cache existed) half-way: no manifest, the next open
    rebuilds and clears the killed build's temp files."""
    root, cache_root, lines = fresh
    open_dataset(root, cache_root)
    _touch(root / "training/rgb/00000002.jpg")
    folder = _cache_file(root, cache_root, "")
    script = f"""
import logging, sys, time
sys.path.insert(0, {str(PROJECT_ROOT)!r})
import data.cache_store as c
from data.readers import load_split
decode = c._decode_chunk
def stall_after_first_chunk(task):
    time.sleep(60 if task[0] else 0)
    return decode(task)
c._decode_chunk, c.CHUNK = stall_after_first_chunk, 4
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
c.open_cache(load_split({str(root)!r}, "train"), {SIZE}, {str(cache_root)!r}, workers=2)
"""
    process = subprocess.Popen([sys.executable, "-u", "-c", script], start_new_session=True, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout.readline().startswith("cache ")  # announced the rebuild: it is under way
        deadline = time.time() + 30
        while not list(folder.glob(".images.npy.tmp-*")) and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert list(folder.glob("*.tmp-*")) and not (folder / MANIFEST).exists()
    dataset = open_dataset(root, cache_root)
    assert lines[-1].startswith("decoding 10 train images")
    assert not list(folder.glob("*.tmp-*"))
    assert_matches_jpegs(load_split(root, "train"), dataset)


def test_caches_of_vanished_datasets_are_pruned_when_another_is_built(fresh, tmp_path):
    root, cache_root, lines = fresh
    gone = shutil.copytree(root, tmp_path / "gone")
    orphan = open_dataset(gone, cache_root).cache.folder
    kept = open_dataset(root, cache_root, split="evaluation").cache.folder
    shutil.rmtree(gone)
    open_dataset(root, cache_root)
    assert not orphan.exists() and kept.exists() and "removed 1 decoded-image cache of datasets" in lines[-2]


# --- errors ---------------------------------------------------------------------------------------------------

def test_corrupt_jpeg_in_a_build_worker_is_one_clear_line(fresh):
    root, cache_root, lines = fresh
    path = root / "training/rgb/00000009.jpg"
    path.write_bytes(path.read_bytes()[:300])
    cache_store.CHUNK, chunk = 2, cache_store.CHUNK  # several tasks, so the bad image meets a worker
    try:
        with pytest.raises(UserError) as info:
            open_dataset(root, cache_root, workers=2)
    finally:
        cache_store.CHUNK = chunk
    message = str(info.value)
    assert "00000009.jpg" in message and "cannot decode" in message and "\n" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    folder = _cache_file(root, cache_root, "")
    assert not (folder / MANIFEST).exists() and not list(folder.glob("*.tmp-*"))


@pytest.mark.slow
def test_cli_prints_a_build_error_as_one_line(fresh):
    root, cache_root, _ = fresh
    path = root / "training/rgb/00000004.jpg"
    path.write_bytes(path.read_bytes()[:300])
    code = ("import sys; from core.common import cli; from data.readers import load_split; "
            "from data.cache_store import open_cache\n"
            f"cli(lambda: open_cache(load_split({str(root)!r}, 'train'), 64, {str(cache_root)!r}, workers=2))()")
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "00000004.jpg" in error[0] and "Traceback" not in result.stderr


def test_unwritable_cache_root_is_a_clear_error(fresh):
    root, cache_root, lines = fresh
    cache_root.write_text("a file where the cache folder should be")
    with pytest.raises(UserError, match="cannot create the decoded-image cache"):
        open_dataset(root, cache_root)


def test_out_of_range_indices_raise(markers, tmp_path):
    dataset = CachedHandDataset(load_split(markers, "evaluation"), SIZE, cache_root=tmp_path)
    with pytest.raises(IndexError):
        dataset.__getitems__([0, len(dataset)])


# --- room on disk, listing and clearing ---------------------------------------------------------------------------

def test_a_build_announces_what_it_takes(fresh, said):
    """Before: how many GB of how many free (and what the other caches hold); after: the time and the GB on disk."""
    root, cache_root, _ = fresh
    for split in ("train", "evaluation"):
        CachedHandDataset(load_split(root, split), SIZE, cache_root=cache_root, workers=1)
    lines = said()
    need = cache_store.needed_bytes(load_split(root, "evaluation"), SIZE)
    train_mb = cache_store.needed_bytes(load_split(root, "train"), SIZE) / 1e6
    assert re.search(rf"\(64 px, {train_mb:.1f} MB of the [\d.]+ [GM]B free\)$", lines[0]), lines[0]
    assert re.search(r"; 1 other caches hold 0\.\d MB\)$", lines[2]), lines[2]
    assert lines[3].startswith("cache ") and " built in " in lines[3] and " MB on disk; " in lines[3]
    assert "python -m data.caches --list" in lines[3]
    folder = cache_folder(load_split(root, "evaluation"), SIZE, cache_root)
    assert need >= sum((folder / name).stat().st_size for name in ("images.npy", "meta.npz")) > need - 3 * 4096


def _no_room(monkeypatch, free):
    usage = shutil.disk_usage("/")
    monkeypatch.setattr(cache_store.shutil, "disk_usage", lambda path: usage._replace(free=free))


@pytest.mark.parametrize("stale", [False, True], ids=["new", "stale_rebuild"])
def test_a_build_without_room_is_refused_in_one_line_leaving_nothing(fresh, monkeypatch, stale):
    root, cache_root, lines = fresh
    split = load_split(root, "train")
    if stale:
        open_dataset(root, cache_root)
        _touch(root / "training/rgb/00000002.jpg")
    _no_room(monkeypatch, 1000)
    with pytest.raises(UserError) as info:
        open_dataset(root, cache_root)
    message = str(info.value)
    assert "\n" not in message and f"needs {cache_store.needed_bytes(split, SIZE) / 1e6:.1f} MB" in message
    assert "0.0 MB are free" in message and "python -m data.caches --list" in message and "cache=false" in message
    assert not cache_folder(split, SIZE, cache_root).exists()


def test_a_full_disk_during_a_build_is_one_line_and_leaves_no_partial_cache(fresh, monkeypatch):
    root, cache_root, lines = fresh
    real, written = cache_store._write_rows, []

    def fill_up(file, first_row, rows):
        if written:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), file[0])
        written.append(first_row)
        real(file, first_row, rows)
    monkeypatch.setattr(cache_store, "_write_rows", fill_up)
    monkeypatch.setattr(cache_store, "CHUNK", 2)
    with pytest.raises(UserError) as info:
        open_dataset(root, cache_root)
    assert "No space left on device" in str(info.value) and "the partial cache was removed" in str(info.value)
    assert "\n" not in str(info.value) and written
    assert not cache_folder(load_split(root, "train"), SIZE, cache_root).exists()


def test_list_and_clear_caches(fresh, tmp_path, monkeypatch, capsys):
    """--list: one row per cache (dataset, split, px, images, GB, last used); --clear --unused-days, --dataset and
    --all remove what they choose, never a cache a process reads."""
    root, cache_root, lines = fresh
    other = shutil.copytree(root, tmp_path / "other")
    monkeypatch.setenv("HANDPOSE_CACHE", str(cache_root))
    train_set = open_dataset(root, cache_root)
    folders = {name: open_dataset(r, cache_root, split=s).cache.folder
               for name, r, s in (("eval", root, "evaluation"), ("other", other, "train"))}
    old = time.time() - 10 * 86400
    os.utime(folders["eval"] / cache_files.IN_USE, (old, old))
    code, out, _ = run_main(caches.main, ["--list"], capsys)
    rows = out.splitlines()
    assert code == 0 and rows[0].split() == ["dataset", "split", "size", "images", "GB", "last", "used"]
    assert len(rows) == 5 and rows[-1].startswith("3 caches, ")
    n_eval = len(load_split(root, "evaluation"))
    assert any(row.split()[:4] == [str(root), "evaluation", "64", str(n_eval)] and "(10 days ago)" in row
               for row in rows)

    code, out, _ = run_main(caches.main, ["--clear", "--unused-days", "5"], capsys)
    assert code == 0 and out.startswith("removed 1 cache ") and not folders["eval"].exists()
    code, out, _ = run_main(caches.main, ["--clear", "--dataset", "other"], capsys)
    assert out.startswith("removed 1 cache ") and not folders["other"].exists()
    code, out, _ = run_main(caches.main, ["--clear", "--all"], capsys)
    assert "removed 0 caches" in out and "kept 1 in use" in out and train_set.cache.folder.exists()
    folder = train_set.cache.folder
    del train_set
    gc.collect()
    code, out, _ = run_main(caches.main, ["--clear", "--all"], capsys)
    assert out.startswith("removed 1 cache ") and not folder.exists()
    code, out, _ = run_main(caches.main, ["--list"], capsys)
    assert out.strip() == f"no decoded-image caches in {cache_root}/"


def test_a_run_that_opens_a_cache_while_clear_removes_it_builds_it_again(fresh):
    """--clear holds a cache's locks while it removes the folder; a run opening that cache meanwhile waits, then
    finds its lock on a deleted file and makes the cache again (it does not build into a folder that is gone)."""
    root, cache_root, lines = fresh
    split = load_split(root, "train")
    folder = open_dataset(root, cache_root).cache.folder
    gc.collect()  # the dataset above no longer reads it
    opened = {}

    def run_opens():
        try:
            opened["cache"] = open_cache(split, SIZE, cache_root, workers=1)
        except (UserError, OSError) as err:
            opened["error"] = err
    with cache_files.unused(folder) as free:  # what clear_caches holds while it removes a cache
        assert free
        run = threading.Thread(target=run_opens)
        run.start()
        time.sleep(0.5)  # the run waits for the build lock
        shutil.rmtree(folder)
    run.join()
    assert "error" not in opened, opened
    assert (folder / MANIFEST).is_file() and opened["cache"].images.shape == (len(split), SIZE, SIZE, 3)
    with cache_files.unused(folder) as free:  # and the new cache is in use by the run from the start
        assert not free


def test_a_cache_in_use_or_a_link_is_never_removed(fresh, tmp_path, capsys):
    """Pruning the caches of vanished datasets keeps one a process still reads; --list and --clear leave a link
    to a folder outside the cache root alone."""
    root, cache_root, lines = fresh
    gone = shutil.copytree(root, tmp_path / "gone")
    reading = open_dataset(gone, cache_root)
    shutil.rmtree(gone)
    open_dataset(root, cache_root)  # a build prunes orphans
    assert reading.cache.folder.is_dir() and reading[0]["image"].shape == (3, SIZE, SIZE)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "images.npy").write_bytes(b"not a cache")
    (cache_root / "linked-train-64px-0123456789abcdef").symlink_to(outside, target_is_directory=True)
    assert [row["folder"].name for row in cache_files.list_caches(cache_root)] == sorted(
        p.name for p in cache_root.iterdir() if not p.is_symlink())
    del reading
    gc.collect()
    caches.clear_caches(cache_root)
    assert [p.name for p in cache_root.iterdir()] == ["linked-train-64px-0123456789abcdef"]
    assert (outside / "images.npy").read_bytes() == b"not a cache"


def test_a_shortfall_smaller_than_the_rounding_reads_as_two_amounts(fresh, monkeypatch):
    root, cache_root, _ = fresh
    split = load_split(root, "train")
    needed = cache_store.needed_bytes(split, SIZE)
    _no_room(monkeypatch, needed - 1)
    with pytest.raises(UserError) as info:
        cache_store.check_space(cache_root / "x", split, SIZE)
    assert f"needs {needed:,} bytes in " in str(info.value) and f"and {needed - 1:,} bytes are free" in str(info.value)


@pytest.mark.parametrize("args, fragment", [
    (["--clear"], "say which caches --clear removes"),
    (["--clear", "--all", "--dataset", "x"], "say which caches --clear removes"),
    (["--list", "--all"], "--list shows every cache"),
    (["--clear", "--unused-days", "-1"], "--unused-days -1.0: must be at least 0"),
])
def test_cache_command_line_errors_are_one_line(args, fragment, capsys):
    code, _, err = run_main(caches.main, args, capsys)
    assert code == 2 and err.count("\n") == 1 and fragment in err, err


def test_the_sampler_starts_an_epoch_part_way_without_reading_the_skipped(markers):
    """set_epoch(epoch, skip=n): the epoch's order (per shard) without its first n indices."""
    data = load_split(markers, "train")
    for rank in range(2):
        loader = make_loader(HandDataset(data, SIZE), 2, train=True, seed=3, rank=rank, world_size=2, workers=0)
        loader.sampler.set_epoch(4)
        order = list(loader.sampler)
        loader.sampler.set_epoch(4, skip=4)
        assert list(loader.sampler) == order[4:] and len(loader.sampler) == len(order) - 4
        assert [b["id"].tolist() for b in loader] == [data.image_ids[order[i:i + 2]].tolist() for i in (4, 6, 8)
                                                      if i + 2 <= len(order)]
        loader.sampler.set_epoch(5)
        assert len(list(loader.sampler)) == len(order)
