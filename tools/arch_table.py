"""Every registered arch at one CPU budget (rows of kind arch_table in docs/results.md), one row per recipe, each
row one command.

    python tools/arch_table.py --minutes 10 --out runs/arch_table          # all rows, about 10 minutes each
    python tools/arch_table.py --rows effb0_unet_64_cpu,effb0_1d_64_cpu --minutes 10

For each row: bench.py times the recipe's training step; the epochs that fill 85 % of --minutes at that rate
(the rest goes to loading, validation and the top-k average) are given to ``train.py --recipe ROW --epochs E``;
``predict.py --tta 10`` scores the evaluation split. Rows already in OUT/table.json are kept (a killed table
continues where it stopped). Writes OUT/table.json and OUT/table.md after every row.
"""
import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training import recipes  # noqa: E402
from data import resolve_or_generate_data_root  # noqa: E402
from data.readers import load_split  # noqa: E402
from scoring.report import current_keys  # noqa: E402
from core.json_files import json_text  # noqa: E402

# Schneider 2020's family with the shared head and with its paper head, then every other arch at its best
ROWS = ("effb0_unet_64_cpu", "effb0_1d_64_cpu", "effb4_unet_64_cpu", "resnet34_unet_64_cpu", "resnet101_unet_64_cpu",
        "res50x2_res34_64_cpu", "ghost_lite_64_cpu", "hourglass_attn_64_cpu", "hg_mlp_64_cpu")
TIME_SHARE = 0.85


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated recipes")
    p.add_argument("--minutes", type=float, default=10.0, help="CPU budget of each row")
    p.add_argument("--tta", type=int, default=10)
    p.add_argument("--out", default="runs/arch_table")
    args = p.parse_args(argv)
    args.rows = [recipes.current_name(r.strip(), print) for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in args.rows if r not in recipes.RECIPES]
    if unknown:
        p.error(f"--rows {unknown[0]}: no such recipe in recipes.py")
    if not args.minutes > 0 or args.tta < 1:
        p.error("--minutes must be > 0 and --tta >= 1")
    return args


def run(command):
    done = subprocess.run([str(c) for c in command], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, command))} failed:\n{done.stderr[-2000:]}")
    return done


def step_rates(rows, out):
    """recipe -> training images/s of its step (bench.py, the recipe's own input size and batch)."""
    rates = {}
    for row in rows:
        config = recipes.recipe_config(row)
        result = out / f"bench_{row}.json"
        run([sys.executable, "bench.py", "--device", "cpu", "--archs", "none", "--recipes", row, "--img-size",
             config["img_size"], "--batch-size", config["batch_size"], "--steps", 5, "--tta", 1, "--loader-batches",
             2, "--loader-seconds", 0, *(["--channels-last"] if config["channels_last"] else []), "--out", result])
        rates[row] = json.loads(result.read_text())["stages"][f"train_step/{row}"]
    return rates


def train_row(row, minutes, rate, train_images, tta, out, shown_out):
    """One row: train for the epochs that fill the budget, predict with TTA, read the figures. ``shown_out``: the
    --out folder as the user gave it, for the row's command."""
    epochs = max(1, math.floor(60 * minutes * TIME_SHARE * rate / train_images))
    run_dir = out / row
    train_command = ["python", "train.py", "--recipe", row, "--epochs", epochs, "--out", Path(shown_out) / row]
    start = time.perf_counter()
    run([sys.executable, *train_command[1:-1], run_dir])
    wall = time.perf_counter() - start
    prefix = out / f"{row}_evaluation_tta{tta}"
    run([sys.executable, "predict.py", "--ckpt", run_dir / "best.pt", "--split", "evaluation", "--tta", tta,
         "--out", prefix])
    scores = json.loads(prefix.with_suffix(".metrics.json").read_text())["reflections_allowed"]
    summary = json.loads((run_dir / "summary.json").read_text())
    config = recipes.recipe_config(row)
    return {"recipe": row, "arch": config["arch"], "head": head_of(config), "epochs": epochs,
            "train_minutes": round(wall / 60, 1), "train_images_per_s": round(summary["train_images_per_s"], 1),
            "eval_pa_mpjpe_mm": round(scores["pa_mpjpe_mm"], 2),
            "fraction_of_constant_shape": round(scores["fraction_of_constant_shape"], 3),
            "command": " ".join(map(str, train_command)) + f" && python predict.py --tta {tta}"}


def head_of(config):
    model = config["model"]
    if "head" in model or "depth_head" in model:
        return model.get("head") or f"2D heatmaps + {model['depth_head']}"
    return "paper"


def write_table(rows, out, minutes):
    (out / "table.json").write_text(json_text(rows, indent=2))
    lines = [f"| recipe | arch | head | epochs in {minutes:g} min | train min | train img/s | eval PA-MPJPE mm "
             f"(tta 10) | of constant shape | command |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{r['recipe']}` | {r['arch']} | {r['head']} | {r['epochs']} | {r['train_minutes']} | "
                     f"{r['train_images_per_s']} | {r['eval_pa_mpjpe_mm']} | "
                     f"{100 * r['fraction_of_constant_shape']:.1f} % | `{r['command']}` |")
    (out / "table.md").write_text("\n".join(lines) + "\n")


def main(argv=None):
    args = parse_args(argv)
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    done = ([current_keys(row) for row in json.loads((out / "table.json").read_text())]
            if (out / "table.json").is_file() else [])  # rows of earlier versions under the current keys
    todo = [r for r in args.rows if r not in {d["recipe"] for d in done}]
    train_images = len(load_split(resolve_or_generate_data_root(None), "train"))  # the hold-out already left out
    rates = step_rates(todo, out)
    for row in todo:
        done.append(train_row(row, args.minutes, rates[row], train_images, args.tta, out, args.out))
        write_table(done, out, args.minutes)
        print(json_text(done[-1]), flush=True)


if __name__ == "__main__":
    main()
