"""Project paths, the user-facing error type and the command-line entry wrapper shared by every script."""
import functools
import sys
from pathlib import Path

import torch

PROJECT_ROOT = Path(__file__).resolve().parent
DEFAULT_DATA_ROOT = PROJECT_ROOT / "data" / "freihand"   # where a downloaded dataset goes (git-ignored)
SYNTHETIC_ROOT = PROJECT_ROOT / "data" / "synthetic"     # the embedded default, generated on first use
CACHE_ROOT = PROJECT_ROOT / "data" / "cache"             # decoded-image caches
RUNS_ROOT = PROJECT_ROOT / "runs"                        # one folder per training run
SUBMISSIONS_ROOT = PROJECT_ROOT / "submissions"          # upload files and raw predictions


class UserError(Exception):
    """A mistake the user can fix (bad path, bad option, broken file). Scripts print it as one line."""


def cli(main):
    """Run ``main`` and turn a UserError into one line on stderr and exit status 2, without a traceback.

    Errors raised inside DataLoader workers arrive wrapped with the worker's traceback; the last line is the
    original message.
    """
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            lines = [line for line in str(err).splitlines() if line.strip()]
            message = lines[-1] if lines else type(err).__name__
            prefix = f"{UserError.__module__}.{UserError.__name__}: "
            message = message.removeprefix(prefix).removeprefix("UserError: ")
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)
    return wrapper


def resolve_device(name):
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is visible to PyTorch; use --device cpu or auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"--device {name!r}: choose auto, cpu or cuda")
    return torch.device(name)
