"""Listing and clearing the decoded-image caches (``data.cache_store``), and their command line:

    python -m data.caches --list                      # every cache: dataset, split, size, images, GB, last used
    python -m data.caches --clear --all               # or --dataset NAME and/or --unused-days N (both must hold)
"""
import argparse
import shutil
import time
from datetime import datetime
from pathlib import Path

from core import locations
from core.common import UserError, check_minimums, cli, shown
from core.messages import logger
from data.cache_files import amount, list_caches, unused

log = logger(__name__)

def format_caches(rows, cache_root):
    """The table ``python -m data.caches --list`` prints."""
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


def clear_caches(cache_root=None, dataset=None, unused_days=None):
    """Remove the caches of ``dataset`` (its folder name or path; None: any) not used for ``unused_days`` days
    (None: whenever used), except those a process builds or reads now. Returns the bytes freed."""
    cache_root = cache_root or locations.root("cache")
    removed, freed, busy = 0, 0, []
    for row in list_caches(cache_root):
        if not _selected(row, dataset, unused_days):
            continue
        with unused(row["folder"]) as free:
            if not free:
                busy.append(row["folder"].name)
                continue
            shutil.rmtree(row["folder"])
        removed, freed = removed + 1, freed + row["bytes"]
    log.info(f"removed {removed} cache{'s' * (removed != 1)} ({amount(freed)}) from {shown(cache_root)}/"
             + (f"; kept {len(busy)} in use by a running process: {', '.join(busy)}" if busy else ""))
    return freed


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
                        "(`python -m data.caches --list` shows them)")
    if args.list:
        print(format_caches(list_caches(), locations.root("cache")))
    else:
        clear_caches(locations.root("cache"), args.dataset, args.unused_days)


if __name__ == "__main__":
    main()
