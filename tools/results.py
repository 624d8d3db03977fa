"""Results as records: one row per training run, ensemble or arch-table row in docs/results.csv, and
docs/results.md rendered from it.

    python tools/results.py add runs/NAME [--note TEXT] [--metrics PREFIX.metrics.json ...] [--kind arch_table]
    python tools/results.py add submissions/NAME_evaluation.ensemble.json
    python tools/results.py render

``add RUN_DIR`` reads the run's config.json, summary.json and log.csv, and the scores of its predictions: every
PREFIX.metrics.json under the submissions folder (and beside --metrics) whose checkpoint lies in the run folder,
or only the files given with --metrics. The evaluation split's scores at --tta 1 and --tta 10 fill their columns.
``add PREFIX.ensemble.json`` adds an ensemble: its members, weights and PREFIX.metrics.json. Run folders record no
machine: the row names the machine ``add`` runs on unless --machine says otherwise.
"""
import argparse
import json
import platform
import shlex
import sys
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core import locations  # noqa: E402
from core.common import UserError, atomic_write, cli, shown, usable_cores  # noqa: E402
from scoring.report import read_scores  # noqa: E402
from training import recipes  # noqa: E402
from training.config import CLI_KEYS  # noqa: E402

CSV = ROOT / "docs" / "results.csv"
MARKDOWN = ROOT / "docs" / "results.md"
KINDS = ("run", "ensemble", "arch_table")
SOURCES = ("run", "readme")   # read from a run's files, or entered once from a table of an earlier README
COLUMNS = ["kind", "source", "name", "recipe", "arch", "command", "seed", "data", "epochs", "wall_minutes",
           "images_per_s", "machine", "val_mm", "val_fraction", "eval_tta1_mm", "eval_tta1_fraction",
           "eval_tta10_mm", "eval_tta10_fraction", "note", "date"]
EVAL_SPLIT = "evaluation"
TTAS = (1, 10)
# Keys that say where or how fast a run ran, not what it trained: never part of its command
NOT_IN_COMMAND = ("arch", "recipe", "data_root", "device", "workers", "checkpoint_minutes", "cache")
SECTIONS = {"run": "Training runs", "ensemble": "Ensembles", "arch_table": "Every arch at one CPU budget"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="append one row to docs/results.csv")
    add.add_argument("target", help="a run folder, or an ensemble's PREFIX.ensemble.json")
    add.add_argument("--metrics", action="append", default=[], help="a PREFIX.metrics.json of this run (repeatable); "
                     "given, only these are read")
    add.add_argument("--kind", choices=KINDS, help="default: run, or ensemble for a .ensemble.json")
    add.add_argument("--note", default="")
    add.add_argument("--data", help="what the --metrics were scored on, when not the run's own data (a held-back set)")
    add.add_argument("--machine", help="what it ran on (default: this machine)")
    add.add_argument("--csv", type=Path, default=CSV)
    locations.add_flags(add, "submissions")
    render = sub.add_parser("render", help="write docs/results.md from docs/results.csv")
    render.add_argument("--csv", type=Path, default=CSV)
    render.add_argument("--out", type=Path, default=MARKDOWN)
    return p.parse_args(argv)


def this_machine():
    """CPU model and cores (and the GPU), for a row whose run folder does not say."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    import torch
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu}, {usable_cores()} cores{gpu}"


def read_json(path, what):
    if not path.is_file():
        raise UserError(f"{path} does not exist: {what}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path} is not JSON ({err}); it was not written by this project") from None


def command_of(config):
    """``python train.py --recipe R`` plus every option where the run's config differs from the recipe's: the
    command that was given, so a time budget's epochs (the row's epochs column) are not an option of it."""
    config = {**config, "epochs": config.get("epochs_asked", config["epochs"])}
    base = recipes.recipe_config(recipes.current_name(config["recipe"]))
    words = ["python", "train.py", "--recipe", base["recipe"]]
    for key in sorted(config):
        if key in NOT_IN_COMMAND or key not in base or config[key] == base[key]:
            continue
        if key in CLI_KEYS:
            words += [f"--{key.replace('_', '-')}", str(config[key])]
        else:
            words += ["--set", f"{key}={json.dumps(config[key], separators=(',', ':'))}"]
    return shlex.join(words)


def wall_minutes(run_dir):
    """The epochs' seconds in log.csv, summed (validation included), in minutes; None for logs without them."""
    import pandas as pd
    log = run_dir / "log.csv"
    if not log.is_file():
        raise UserError(f"{log} does not exist: {run_dir} finished no epoch")
    history = pd.read_csv(log)
    return round(history["epoch_seconds"].sum() / 60, 1) if "epoch_seconds" in history else None


def run_metrics(run_dir, given):
    """[(path, scores)] of the run's predictions: ``given``, else the metrics.json files whose checkpoint is in
    ``run_dir``."""
    for path in given:
        if not Path(path).is_file():
            raise UserError(f"--metrics {path}: no such file; predict.py writes PREFIX.metrics.json beside its upload")
    if given:
        return [(Path(path), read_scores(path)) for path in given]
    found = []
    for path in sorted(locations.root("submissions").glob("**/*.metrics.json")):
        scores = read_scores(path)
        ckpt = scores.get("ckpt")
        if ckpt and (ROOT / ckpt).resolve().parent == run_dir.resolve():
            found.append((path, scores))
    return found


def eval_columns(metrics):
    """eval_tta{1,10}_{mm,fraction} from the evaluation split's scores (the newest file of each TTA wins)."""
    columns = {}
    for path, scores in sorted(metrics, key=lambda item: item[0].stat().st_mtime):
        tta = scores.get("tta")
        if scores.get("split") != EVAL_SPLIT or tta not in TTAS:
            print(f"skipped {shown(path)}: split {scores.get('split')}, --tta {tta} (the table keeps "
                  f"{EVAL_SPLIT} at --tta {' and '.join(map(str, TTAS))})")
            continue
        aligned = scores["reflections_allowed"]
        columns[f"eval_tta{tta}_mm"] = round(aligned["pa_mpjpe_mm"], 2)
        if "fraction_of_constant_shape" in aligned:
            columns[f"eval_tta{tta}_fraction"] = round(aligned["fraction_of_constant_shape"], 3)
    return columns


def run_row(run_dir, args):
    config = read_json(run_dir / "config.json", "give a run folder of train.py")
    summary = read_json(run_dir / "summary.json", "the run has not finished (train.py writes it at the end)")
    speed = summary.get("train_images_per_s")
    return {"kind": args.kind or "run", "source": "run", "name": run_dir.name, "recipe": config["recipe"],
            "arch": config["arch"], "command": command_of(config), "seed": config["seed"],
            "data": Path(config["data_root"]).name if config["data_root"] else "", "epochs": summary["epochs"],
            "wall_minutes": wall_minutes(run_dir), "images_per_s": round(speed, 1) if speed else None,
            "val_mm": round(summary["best_val_pa_mpjpe_mm"], 2),
            "val_fraction": round(summary["best_val_fraction_of_constant_shape"], 3),
            **eval_columns(run_metrics(run_dir, args.metrics))}


def ensemble_row(report_path, args):
    report = read_json(report_path, "give an ensemble's PREFIX.ensemble.json (ensemble.py writes it)")
    prefix = str(report_path)[:-len(".ensemble.json")]
    scores_path = Path(f"{prefix}.metrics.json")
    metrics = [(scores_path, read_scores(scores_path))] if scores_path.is_file() else []
    for path, scores in metrics:
        scores.setdefault("tta", members_tta(report["members"]))
    weights = " ".join(f"{w:.3f}" for w in report["weights"])
    command = shlex.join(["python", "ensemble.py", *report["members"], "--name", report["name"]]) + \
        f" --weights {weights}"
    return {"kind": args.kind or "ensemble", "source": "run", "name": report["name"], "recipe": "", "arch": "ensemble",
            "command": command, **eval_columns(metrics)}


def members_tta(members):
    """The TTA of every member's prediction when they agree (read from their metrics.json), else None."""
    ttas = set()
    for member in members:
        path = Path(str(member)[:-len(".npz")] + ".metrics.json")
        ttas.add(read_scores(path).get("tta") if path.is_file() else None)
    return ttas.pop() if len(ttas) == 1 else None


def add(args):
    import pandas as pd
    target = Path(args.target)
    if target.name.endswith(".ensemble.json"):
        row = ensemble_row(target, args)
    elif target.is_dir():
        row = run_row(target, args)
    else:
        raise UserError(f"{target}: give a run folder (runs/NAME) or an ensemble's PREFIX.ensemble.json")
    row.update(note=args.note, machine=args.machine or this_machine(), date=datetime.now().strftime("%Y-%m-%d"))
    if args.data:
        row["data"] = args.data
    table = read_table(args.csv) if args.csv.is_file() else pd.DataFrame(columns=COLUMNS)
    table = pd.concat([table, pd.DataFrame([row], columns=COLUMNS)], ignore_index=True)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.csv) as tmp:
        table.to_csv(tmp, index=False)
    print(f"added {row['kind']} {row['name']} to {shown(args.csv)} (row {len(table)})")


def read_table(path):
    import pandas as pd
    table = pd.read_csv(path, dtype={"seed": "Int64", "epochs": "Int64"}, keep_default_na=True)
    unknown = sorted(set(table.columns) - set(COLUMNS))
    if unknown or set(table["kind"]) - set(KINDS) or set(table["source"]) - set(SOURCES):
        raise UserError(f"{path}: unknown columns {unknown} or kinds/sources; expected columns {', '.join(COLUMNS)}, "
                        f"kinds {', '.join(KINDS)}, sources {', '.join(SOURCES)}")
    return table.reindex(columns=COLUMNS)


def figure(mm, fraction):
    """'15.91 mm = 73.7 %' (a fraction of the constant shape), the mm alone, or '' when not measured."""
    import pandas as pd
    if pd.isna(mm):
        return ""
    return f"{mm:.2f} mm" + ("" if pd.isna(fraction) else f" = {100 * fraction:.1f} %")


def plain(value):
    import pandas as pd
    return "" if pd.isna(value) else str(value)


def markdown_rows(table):
    header = ["name", "command", "seed", "data", "epochs", "wall min", "img/s", "validation", "eval --tta 1",
              "eval --tta 10", "machine", "source", "note"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.itertuples(index=False):
        cells = [row.name, f"`{row.command}`", plain(row.seed), plain(row.data), plain(row.epochs),
                 plain(row.wall_minutes), plain(row.images_per_s), figure(row.val_mm, row.val_fraction),
                 figure(row.eval_tta1_mm, row.eval_tta1_fraction), figure(row.eval_tta10_mm, row.eval_tta10_fraction),
                 plain(row.machine), row.source, plain(row.note)]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return lines


def render(args):
    if not args.csv.is_file():
        raise UserError(f"{args.csv} does not exist; add a run first: python tools/results.py add runs/NAME")
    table = read_table(args.csv)
    intro = (f"Generated by `python tools/results.py render` from `{args.csv.name}`; do not edit by hand. Each "
             "figure is PA-MPJPE and its fraction of the constant-shape baseline (docs/conventions.md). Rows of "
             "source `readme` were entered once from an earlier README; their run folders are gone.")
    lines = ["# Results", "", intro, ""]
    for kind in KINDS:
        rows = table[table["kind"] == kind]
        if len(rows):
            lines += [f"## {SECTIONS[kind]}", "", *markdown_rows(rows), ""]
    with atomic_write(args.out) as tmp:
        tmp.write_text("\n".join(lines))
    print(f"wrote {shown(args.out)} ({len(table)} rows)")


@cli
def main(argv=None):
    args = parse_args(argv)
    locations.apply_flags(args, "submissions")
    add(args) if args.action == "add" else render(args)


if __name__ == "__main__":
    main()
