"""Check a data root and say what it holds: the layout, each folder's images, annotations and labels, and every
problem as one line with its fix. It only reads (nothing is written into the data root).

    python -m data.check DIR [--decode]

The checks are data.readers' own (the ones train.py and predict.py run when they load a split), run on every
folder of the layout so that one bad folder does not hide another; ``--decode`` also decodes every image and
mask (data.dataset.decode_image), which finds a corrupt JPEG but reads the whole set. Exit status 0 when nothing
is wrong, 1 when a problem was found, 2 when DIR holds no dataset at all.
"""
import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from core.common import UserError, cli, progress, shown
from data.dataset import decode_image
from data.readers import FREIHAND_HINT, detect_layout, load_all_training, load_split

LAYOUT_NAMES = {"freihand": "FreiHAND v2", "mp21": "MP21"}
# (folder as the user sees it, how the readers load it); FreiHAND's training folder is read whole, without the
# validation hold-out, so that checking never writes the saved split
FOLDERS = {"freihand": (("training", lambda root: load_all_training(root)),
                        ("evaluation", lambda root: load_split(root, "evaluation"))),
           "mp21": tuple((name, lambda root, name=name: load_split(root, name)) for name in ("train", "val", "test"))}
DECODE_SIZE = 8            # --decode: pixels are only decoded, so the smallest input will do
SHOWN_PROBLEMS = 5         # --decode: the first bad images named, then a count


@dataclass
class Report:
    layout: str
    lines: list = field(default_factory=list)      # what was found, one line per folder
    problems: list = field(default_factory=list)   # one line each, with its fix


def describe(folder, split):
    """One line: images, annotations, image versions, labels and masks of a loaded split."""
    n_ann = split.num_annotations
    versions = len(split) // n_ann
    labels = [name for name, values in (("xyz", split.xyz), ("scale", split.scale)) if values is not None]
    masks = "" if split.mask_paths is None else f"; {sum(p is not None for p in split.mask_paths)} masks"
    unlabelled = "" if split.labelled else f" (no {folder}_xyz.json: no local scores)"
    return (f"{folder}: {len(split)} images = {n_ann} annotations x {versions} version{'s' * (versions > 1)}; "
            f"labels: {', '.join(labels) or 'none'}{unlabelled}{masks}")


def decode_problems(split):
    """One line per image or mask that does not decode (the first few named, then a count)."""
    paths = list(split.image_paths) + [p for p in (split.mask_paths or []) if p is not None]
    bad = []
    for path in progress(paths, desc=f"decoding {split.name}", unit="img"):
        try:
            decode_image(path, DECODE_SIZE)
        except UserError as err:
            bad.append(str(err))
    extra = [f"... and {len(bad) - SHOWN_PROBLEMS} more images that do not decode"] if len(bad) > SHOWN_PROBLEMS else []
    return bad[:SHOWN_PROBLEMS] + extra


def check_root(root, decode=False):
    """A Report of the dataset at ``root``; a UserError when it holds none."""
    root = Path(root)
    layout = detect_layout(root)
    if layout is None:
        raise UserError(f"no dataset at {root}: {FREIHAND_HINT}")
    report = Report(layout)
    for folder, load in FOLDERS[layout]:
        try:
            split = load(root)
        except UserError as err:
            report.problems.append(f"{folder}: {err}")
            continue
        report.lines.append(describe(folder, split))
        if decode:
            report.problems += [f"{folder}: {line}" for line in decode_problems(split)]
    return report


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root", help="the data root, e.g. data/freihand")
    p.add_argument("--decode", action="store_true", help="also decode every image and mask (reads the whole set)")
    return p.parse_args(argv)


@cli
def main(argv=None):
    args = parse_args(argv)
    report = check_root(args.root, args.decode)
    print(f"{shown(Path(args.root))}: {LAYOUT_NAMES[report.layout]} layout")
    for line in report.lines:
        print(f"  {line}")
    for line in report.problems:
        print(f"problem: {line}", file=sys.stderr)
    print(f"{len(report.problems)} problem{'s' * (len(report.problems) != 1)}" if report.problems else "no problems")
    if report.problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
