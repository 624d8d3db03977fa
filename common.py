"""Shared by every module: project paths, the error types and the command-line error boundary (`cli`), the one
atomic writer, and the writability checks made before any work starts."""
import contextlib
import functools
import os
import shutil
import sys
from pathlib import Path

import torch

PROJECT_ROOT = Path(__file__).resolve().parent
DEFAULT_DATA_ROOT = PROJECT_ROOT / "data" / "freihand"   # where a downloaded dataset goes (git-ignored)
SYNTHETIC_ROOT = PROJECT_ROOT / "data" / "synthetic"     # the embedded default, generated on first use
CACHE_ROOT = PROJECT_ROOT / "data" / "cache"             # decoded-image caches
RUNS_ROOT = PROJECT_ROOT / "runs"                        # one folder per training run
SUBMISSIONS_ROOT = PROJECT_ROOT / "submissions"          # upload files and raw predictions


TEMP_MARK = ".tmp-"   # temp files are ".<name>.tmp-<pid>" beside the file they become


class UserError(Exception):
    """A mistake the user can fix (bad path, bad option, broken file). Scripts print it as one line."""


class Interrupted(Exception):
    """Ctrl-C, re-raised with what was kept and how to go on; scripts print it as one line and exit 130."""


EXIT_USER_ERROR, EXIT_INTERRUPTED = 2, 130


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
    disk, a read-only folder), into one line on stderr and exit status 2, and Ctrl-C into one line and exit
    status 130, without a traceback."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {one_line(err)}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        except OSError as err:
            print(f"error: {os_error_line(err)}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        except Interrupted as err:
            print(f"interrupted: {err}", file=sys.stderr)
            sys.exit(EXIT_INTERRUPTED)
        except KeyboardInterrupt:
            print("interrupted (Ctrl-C); nothing was written after the last message above", file=sys.stderr)
            sys.exit(EXIT_INTERRUPTED)
    return wrapper


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


def resolve_device(name):
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is visible to PyTorch; use --device cpu or auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"--device {name!r}: choose auto, cpu or cuda")
    return torch.device(name)
