"""Messages go through Python's logging, under the logger "handpose", so a user can silence or redirect them.

Every module takes its logger with ``logger(__name__)``: info lines (what a step does, what it wrote) and
warnings (a choice the user may not expect). A script's ``cli`` boundary (core.common) sets up the one handler
for the length of the call with ``handler_installed``: info on stdout, warnings on stderr, plain lines. Without a
script (the library imported in a notebook), Python's defaults apply: warnings on stderr, info only where the user
configures logging. Errors at the command line stay one line (core.common.cli), not log records.
"""
import contextlib
import logging
import sys

from tqdm import tqdm

ROOT = "handpose"


def logger(name):
    """The logger of module ``name`` (its ``__name__``), under the project's root logger."""
    return logging.getLogger(f"{ROOT}.{name}")


class _Lines(logging.Handler):
    """Each record as one plain line: below WARNING on stdout, else on stderr after "warning: ". The stream is
    looked up per line, so a redirected sys.stdout is followed; tqdm.write keeps a live progress bar below it."""

    def emit(self, record):
        if record.levelno >= logging.WARNING:
            tqdm.write(f"warning: {self.format(record)}", file=sys.stderr)
        else:
            tqdm.write(self.format(record), file=sys.stdout)


@contextlib.contextmanager
def handler_installed():
    """The script's one handler on the project's logger for the length of a command, info and up; removed (and
    the level given back) after it, so commands run one after the other in a process do not pile handlers up."""
    root = logging.getLogger(ROOT)
    handler, level, propagate = _Lines(), root.level, root.propagate
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False    # the lines are written once, here, whatever the user's root logger does
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        root.propagate = propagate


def add_quiet_flag(parser):
    parser.add_argument("--quiet", action="store_true", help="warnings and errors only: no progress lines or bars")


def set_quiet(quiet=True):
    """Warnings only (a script's --quiet, the ranks after the first of a DDP run), or info again."""
    logging.getLogger(ROOT).setLevel(logging.WARNING if quiet else logging.INFO)


def quieted():
    """Whether the project's logger was set above info (--quiet, or by the user): progress bars follow it."""
    return logging.getLogger(ROOT).level > logging.INFO
