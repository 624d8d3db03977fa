"""Shared by every module: project paths and how they are shown, the error types and the command-line error boundary
(`cli`), the one atomic writer, the writability checks made before any work starts, progress bars, the worker pool and
images as floats."""
import contextlib
import functools
import hashlib
import multiprocessing
import os
import shutil
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

import torch
from tqdm import tqdm

from core import messages

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = PROJECT_ROOT / "data" / "freihand"   # where a downloaded dataset goes (git-ignored)
# Where the project writes (caches, runs, submissions, the synthetic set): core.locations.


def shown(path):
    """A path relative to the project when it lies inside it (shorter output lines), else absolute."""
    path = Path(path).resolve()
    return path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path


TEMP_MARK = ".tmp-"   # temp files are ".<name>.tmp-<pid>" beside the file they become


class UserError(Exception):
    """A mistake the user can fix (bad path, bad option, broken file). Scripts print it as one line."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM, re-raised with what was kept and how to go on; scripts print it as one line (none when
    the message is empty: the other processes of a DDP run) and exit with ``status``: 130 after SIGINT, 143 after
    SIGTERM."""

    def __init__(self, message, status=130):
        super().__init__(message)
        self.status = status


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, torchrun, a notebook's end) arriving where a script does not stop cleanly by itself:
    handled wherever Ctrl-C is, and the script exits 143."""


EXIT_USER_ERROR, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 128 + signal.SIGINT, 128 + signal.SIGTERM


def os_error_line(err):
    """An OSError (a full disk, a read-only folder, a file where a folder should be) as one line naming the path."""
    where = f" {err.filename}" if err.filename else ""
    return f"cannot use{where}: {err.strerror or err}; free space, fix the permissions or choose another path"


def one_line(err):
    """The message of ``err``. Errors raised inside DataLoader workers arrive wrapped with the worker's
    traceback; the last line is the original message."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    message = lines[-1] if lines else type(err).__name__
    prefix = f"{UserError.__module__}.{UserError.__name__}: "
    return message.removeprefix(prefix).removeprefix("UserError: ")


def cli(main):
    """The error boundary of every script: run ``main`` and turn a UserError, or an OSError on a path (a full
    disk, a read-only folder), into one line on stderr and exit status 2, and Ctrl-C (SIGINT) or SIGTERM into one
    line and exit status 130 or 143, without a traceback. Messages are written by the one handler it installs
    (core.messages)."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        with stop_signals_restored(), messages.handler_installed():
            try:
                with terminate_as_exception():
                    return main(*args, **kwargs)
            except UserError as err:
                print(f"error: {one_line(err)}", file=sys.stderr)
                sys.exit(EXIT_USER_ERROR)
            except OSError as err:
                print(f"error: {os_error_line(err)}", file=sys.stderr)
                sys.exit(EXIT_USER_ERROR)
            except Interrupted as err:
                ignore_stop_signals()  # on the way out: under torchrun the other ranks' ends signal this one again
                if str(err):
                    print(f"interrupted: {err}", file=sys.stderr)
                sys.exit(err.status)
            except KeyboardInterrupt as err:
                ignore_stop_signals()
                by = "SIGTERM" if isinstance(err, Terminated) else "Ctrl-C"
                print(f"interrupted ({by}); nothing was written after the last message above", file=sys.stderr)
                sys.exit(EXIT_TERMINATED if isinstance(err, Terminated) else EXIT_INTERRUPTED)
    return wrapper


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _in_main_thread():
    return threading.current_thread() is threading.main_thread()  # only it may set signal handlers


def ignore_stop_signals():
    """SIGINT and SIGTERM do nothing from now on (a process on its way out, a loader worker that its parent stops)."""
    if _in_main_thread():
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)


@contextlib.contextmanager
def stop_signals_restored():
    """The SIGINT and SIGTERM handlers as they were before the block, whatever it set."""
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS} if _in_main_thread() else {}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if handler is not None:  # None: set outside Python, cannot be set back from here
                signal.signal(signum, handler)


@contextlib.contextmanager
def terminate_as_exception():
    """SIGTERM raises ``Terminated`` in this process while the block runs (in the main thread only; a forked child,
    such as a pool worker, still dies of it as by default)."""
    if not _in_main_thread():
        yield
        return
    owner = os.getpid()

    def raise_terminated(signum, frame):
        if os.getpid() != owner:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_minimums(args, minimums):
    """Every option ``args.KEY`` that is given (not None) is at least ``minimums[KEY]``, else a UserError naming
    it as the command line spells it (``--KEY``, dashes for underscores)."""
    for key, low in minimums.items():
        value = getattr(args, key)
        if value is not None and value < low:
            raise UserError(f"--{key.replace('_', '-')} {value}: must be at least {low}")


def check_writable(path, what):
    """Before any work: ``path`` (a file or folder to be made) can be created. Its nearest existing ancestor must
    be a writable folder (a probe file is written there and removed); a UserError names the problem."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder; choose another path")
    ancestor = path if path.exists() else path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{what} {path} lies below {ancestor}, which is a file; choose another path")
    ensure_writable_folder(ancestor, what, target=path)


def ensure_writable_folder(folder, what, target=None):
    """Create ``folder`` (and its parents) and prove a file can be written there, before any work starts: a
    read-only file system, a file in the way or a full disk is a UserError naming the folder."""
    folder = Path(folder)
    probe = folder / f".write-probe{TEMP_MARK}{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"0")
            os.fsync(f.fileno())
    except FileExistsError:
        raise UserError(f"{what} {folder} is a file, not a folder; choose another path") from None
    except OSError as err:
        where = folder if target is None or Path(target) == folder else f"{target} (in {folder})"
        raise UserError(f"cannot write {what} {where} ({err.strerror or err}); free space, make it writable or "
                        f"choose another path") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
    return folder


@contextlib.contextmanager
def atomic_write(path):
    """Yield a temp path beside ``path`` to write (a file, or a folder to fill); when the block ends normally it
    is fsynced and ``os.replace``d onto ``path``, so a reader sees the old one or the new one, never a partial
    one. On any error (a full disk, Ctrl-C) the temp is removed, and a failure to remove it never hides that
    error. The one place the project replaces a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")
    try:
        yield tmp
        descriptor = os.open(tmp, os.O_RDONLY)  # a file, or a folder the block filled (fsync flushes its entries)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and not err.filename:  # a failed write names no file: name the target
            raise OSError(err.errno, err.strerror or str(err), str(path)) from None
        raise


def remove_stale_temps(folder):
    """Delete temp files a killed writer left in ``folder`` (call it only while no other process writes there)."""
    for stale in Path(folder).glob(f".*{TEMP_MARK}*"):
        with contextlib.suppress(OSError):
            stale.unlink()


def usable_cores():
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _end_worker(signum, frame):
    raise SystemExit(128 + signum)


def _pool_worker_signals():
    """In a pool worker: Ctrl-C is the parent's to handle; SIGTERM (what Pool.terminate sends, or a scheduler to the
    whole group) ends the worker by an exception, which releases the task queue's lock on the way out. Killed outright
    while it waited for a task, the worker would keep that lock, and the parent's terminate() would wait for ever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _end_worker)


@contextlib.contextmanager
def fork_pool(workers):
    """A pool of ``workers`` processes forked from this one (no re-imports where fork exists). Leaving the block
    normally waits for the workers to finish; leaving it by an exception terminates them."""
    fork = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    with multiprocessing.get_context(fork).Pool(workers, initializer=_pool_worker_signals) as pool:
        yield pool
        pool.close()
        pool.join()


def unit_float(images):
    """uint8 images -> float32 in [0, 1]; float images -> float32, values as they are. Same device."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


def file_sha256(path):
    """Hex SHA-256 of a file's bytes, read in 1 MB blocks."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


PROGRESS_LOG_SECONDS = 60.0  # without a terminal (a log file): at most one progress line this often


def median_seconds(step, steps, warmup, sync):
    """Median wall time of ``step()`` over ``steps`` calls after ``warmup`` untimed ones, ``sync()`` around each."""
    for _ in range(warmup):
        step()
    seconds = []
    for _ in range(steps):
        sync()
        start = time.perf_counter()
        step()
        sync()
        seconds.append(time.perf_counter() - start)
    return float(statistics.median(seconds))


class _PlainLines:
    """tqdm's output for a log file: each redraw becomes one plain line, without carriage returns."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):
        text = text.replace("\r", "").rstrip()
        if text:
            self.stream.write(text + "\n")

    def flush(self):
        self.stream.flush()


def progress(iterable=None, desc="", total=None, unit="it", enabled=True, **kwargs):
    """A progress bar on stderr for a step that can take more than a few seconds. On a terminal, tqdm's live bar,
    cleared when done. Otherwise (a log file) quiet for steps shorter than PROGRESS_LOG_SECONDS, then one plain
    line that often (done, total, rate, time left) and a last one at the end. ``enabled`` False, or the messages
    quieted (--quiet): no output."""
    enabled = enabled and not messages.quieted()
    if sys.stderr.isatty():
        return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True, mininterval=1,
                    disable=not enabled, **kwargs)
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=True, file=_PlainLines(sys.stderr), ncols=100,
                ascii=True, mininterval=PROGRESS_LOG_SECONDS, maxinterval=PROGRESS_LOG_SECONDS,
                delay=PROGRESS_LOG_SECONDS, disable=not enabled, **kwargs)
