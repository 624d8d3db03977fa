"""Train any registered architecture.

    python train.py --arch effb4_1d          # the Schneider 2020 recipe on data/freihand (or the synthetic set)
    python train.py --arch resnet101 --epochs 20 --set loss.coord_l1=2.0 --set aug.rotate.max_deg=90
    python train.py --arch effb4_1d --out runs/effb4_1d_x --resume
    torchrun --nproc_per_node 2 train.py --arch effb0_1d  # DDP; --batch-size is per process
    python train.py --list-archs

A run folder holds config.json (resolved), log.csv, curves.png, last.pt, best.pt, val_pred.npz, topk.pt (with
--set average_top_k=K), the TensorBoard event files, summary.json and, while a process trains in it, .lock.
The trainer itself is the training/ package (config, setup, trainer, checkpoints, rundir, distributed).
"""
import argparse

import models
from core import locations, messages
from core.common import cli, shown
from data import augment
from training import recipes
from training import runlog
from training.trainer import run


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", help="a registered architecture (see --list-archs)")
    p.add_argument("--recipe", help="recipe name in recipes.py (default: the one named like --arch)")
    p.add_argument("--list-archs", action="store_true", help="print the architectures and exit")
    p.add_argument("--list-runs", action="store_true", help="print a table of the runs in runs/ and exit")
    p.add_argument("--data-root", help="dataset folder (default: data/freihand, else the synthetic set)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--budget-minutes", type=float, metavar="M",
                   help="train fewer epochs where the run's epochs would take longer than M minutes on this machine "
                        "(timed before the first step; 0: every epoch)")
    p.add_argument("--batch-size", type=int, help="per process")
    p.add_argument("--img-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--pretrained", help="imagenet | none | PATH to local weights (default: imagenet on real "
                                        "data, none on the synthetic set)")
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--seed", type=int)
    p.add_argument("--augs", help=f"comma-separated: {', '.join(augment.AUG_NAMES)}; or none")
    p.add_argument("--backgrounds", help="folder of background images for the background swap")
    p.add_argument("--workers", type=int, help="data-loading processes (-1: sized to the machine)")
    p.add_argument("--folds", type=int, help="K-fold cross-validation by hand: K folds (default 0: the saved 5 %% "
                                            "hold-out)")
    p.add_argument("--fold", type=int, help="which fold (0..K-1) is validated; its val_pred.npz is out-of-fold")
    p.add_argument("--pseudo-labels", metavar="PRED.npz",
                   help="add the images of the split a predict.py or ensemble.py file predicts, its joints as "
                        "their labels (--set pseudo_weight=W, pseudo_keep=SHARE)")
    p.add_argument("--out", help="run folder (default: runs/RECIPE_YYYYmmdd-HHMMSS, with _foldKofN under --folds)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (default: the newest run "
                                                         "of --arch) from its last.pt")
    locations.add_flags(p, "runs", "cache", "synthetic")
    messages.add_quiet_flag(p)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any recipe key, e.g. loss.js1d=0.1, aug.rotate.max_deg=90, amp=false")
    return p.parse_args(argv)


@cli
def main(argv=None):
    args = parse_args(argv)
    messages.set_quiet(args.quiet)
    locations.apply_flags(args, "runs", "cache", "synthetic")
    if args.list_archs:
        print_archs()
        return
    if args.list_runs:
        runs_root = locations.root("runs")
        table = runlog.list_runs(runs_root)
        print(table.to_string(index=False) if len(table) else f"no runs with a finished epoch in {shown(runs_root)}/")
        return
    run(args)


def print_archs():
    from models.flops import count_gflops
    print(f"{'arch':<16}{'paper':<15}{'params':>10}{'input':>7}{'GFLOPs':>9}  summary")
    for name in models.list_models():
        entry = models.model_entry(name)
        size = recipes.RECIPES.get(name, recipes.CONFIG_DEFAULTS)["img_size"]
        model = models.create_model(name, pretrained="none").eval()
        params = sum(p.numel() for p in model.parameters())
        print(f"{name:<16}{entry.paper:<15}{params / 1e6:>9.2f}M{size:>7}{count_gflops(model, size):>9.2f}  "
              f"{entry.summary}")


if __name__ == "__main__":
    main()
