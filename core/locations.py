"""Where the project writes: one root per kind of output, each moved by an environment variable named
HANDPOSE_<KIND> (read when the root is needed, as TORCH_HOME is) or by the matching command-line flag, which
overrides the variable for that command. Unset or empty, a root is its default inside the project.

    kind          variable               flag                default
    cache         HANDPOSE_CACHE         --cache-dir         data/cache/      (decoded images; splits derived
                                                                               from a dataset under datasets/)
    runs          HANDPOSE_RUNS          --runs-dir          runs/
    submissions   HANDPOSE_SUBMISSIONS   --submissions-dir   submissions/
    synthetic     HANDPOSE_SYNTHETIC     --synthetic-dir     data/synthetic/

A dataset's own folder (--data-root) is only ever read.
"""
import os
from dataclasses import dataclass
from pathlib import Path

from core.common import PROJECT_ROOT

ENV_PREFIX = "HANDPOSE_"


@dataclass(frozen=True)
class Location:
    kind: str
    default: Path
    what: str            # what the root holds, for help texts and messages

    @property
    def env(self):
        return f"{ENV_PREFIX}{self.kind.upper()}"

    @property
    def flag(self):
        return f"--{self.kind}-dir"

    @property
    def dest(self):
        return self.flag.removeprefix("--").replace("-", "_")


LOCATIONS = {location.kind: location for location in (
    Location("cache", PROJECT_ROOT / "data" / "cache", "decoded-image caches and the splits derived from a dataset"),
    Location("runs", PROJECT_ROOT / "runs", "run folders (checkpoints, logs)"),
    Location("submissions", PROJECT_ROOT / "submissions", "upload files and raw predictions"),
    Location("synthetic", PROJECT_ROOT / "data" / "synthetic", "the generated synthetic set"),
)}


def root(kind):
    """The folder of ``kind`` ('cache', 'runs', 'submissions', 'synthetic'): its variable when set (a relative
    value taken from the current folder), else the default. Absolute; not created here."""
    location = LOCATIONS[kind]
    value = os.environ.get(location.env, "").strip()
    return Path(value).expanduser().absolute() if value else location.default


def setting(kind):
    """How to move ``kind``'s root, in words for a message: 'HANDPOSE_CACHE=DIR or --cache-dir DIR'."""
    location = LOCATIONS[kind]
    return f"{location.env}=DIR or {location.flag} DIR"


def add_flags(parser, *kinds):
    """Add the flag of each of ``kinds`` to an argparse parser."""
    for kind in kinds:
        location = LOCATIONS[kind]
        parser.add_argument(location.flag, dest=location.dest, metavar="DIR",
                            help=f"the folder of {location.what} (default: ${location.env}, else "
                                 f"{location.default.relative_to(PROJECT_ROOT)}/)")


def apply_flags(args, *kinds):
    """Each of ``kinds`` given as a flag in ``args`` becomes its variable for this process and those it starts
    (loader workers, torchrun's ranks), so every reader of ``root`` sees one value."""
    for kind in kinds:
        value = getattr(args, LOCATIONS[kind].dest, None)
        if value:
            os.environ[LOCATIONS[kind].env] = str(Path(value).expanduser().absolute())
