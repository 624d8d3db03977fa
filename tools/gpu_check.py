"""The prepared GPU check: one run that proves the CUDA path, its speed and that the GPU recipe learns.

    python tools/gpu_check.py --download-wheels tools/wheels --python-version 3.12   # on a machine with internet
    tools/gpu_check.sh                                                               # on the GPU machine
    python tools/gpu_check.py --dry-run --out check                                 # the same steps, tiny, on a CPU

On a bare machine with NVIDIA's PyTorch and no internet it
1. installs the distributions the project needs that the machine lacks, from the wheels in --wheels (without
   their dependencies and never over an installed version: NVIDIA's torch, numpy and friends stay as they are);
2. runs ``pytest -m cuda``;
3. runs ``bench.py --device cuda --amp --channels-last`` over every arch and the GPU recipes at 224 px: training
   images/s, the augmentation share of a step, the loader's headroom;
4. generates a synthetic set of --train hands (one image version each) and --eval evaluation hands;
5. trains --recipe for about --train-minutes (its epochs sized by the step rate bench measured), the last tenth of
   them in a final stage at a larger input size, then predicts the evaluation split at that size with ``--tta 10``
   and reads its fraction of the constant shape.
Every step's figures go to OUT/gpu_check.json (written after each step, so a step that fails keeps the others);
each step's output to OUT/<step>.log. Exit status 1 when any step failed. To run again only what failed:
--skip names steps to leave out, --cuda-tests selects tests by pytest's -k, and --train-epochs sizes step 5
without the bench's rate.
"""
import argparse
import importlib.metadata
import json
import math
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOT_CARRIED = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|pip|setuptools|wheel)$")
# final_size, final_fraction: the recipe's final stage, at this size for this share of the epochs (training/stages.py)
FULL = {"device": "cuda", "img_size": 224, "final_size": 320, "final_fraction": 0.1, "batch_size": 64,
        "bench_steps": 10, "train": 20000, "eval": 3960, "recipe": "effb4_1d_plus", "archs": "all",
        "bench_recipes": "effb4_1d_plus,resnet34_plus", "tta": 10, "workers": 8, "max_epochs": None,
        "loader_batches": 200, "loader_seconds": 3.0}
DRY = {"device": "cpu", "img_size": 64, "final_size": 96, "final_fraction": 0.5, "batch_size": 4, "bench_steps": 1,
       "train": 24, "eval": 8, "recipe": "effb0_unet_64_cpu", "archs": "none", "bench_recipes": "effb0_unet_64_cpu",
       "tta": 2, "workers": 0, "max_epochs": 2, "loader_batches": 2, "loader_seconds": 0}


STEPS = ("install", "pytest_cuda", "synthetic_set", "bench", "train_and_predict")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu_check", help="folder for gpu_check.json, the logs and the data")
    p.add_argument("--wheels", default=str(ROOT / "tools" / "wheels"), help="folder of wheels to install from")
    p.add_argument("--train-minutes", type=float, default=4.0, help="training budget of step 5")
    p.add_argument("--train-epochs", type=int, default=0,
                   help="step 5's epochs instead of those --train-minutes fits at the bench's rate (0 = those)")
    p.add_argument("--skip", default="", help=f"steps to leave out, comma-separated: {', '.join(STEPS)}")
    p.add_argument("--cuda-tests", default="", metavar="EXPR", help="step 2 runs only the CUDA tests pytest's "
                                                                    "-k EXPR selects (default: all)")
    p.add_argument("--dry-run", action="store_true", help="every step at tiny sizes on the CPU (the suite runs it)")
    p.add_argument("--download-wheels", metavar="DIR", help="only write the wheels of this environment's "
                                                             "distributions (but torch's stack) to DIR, and exit")
    p.add_argument("--python-version", help="with --download-wheels: the GPU machine's Python, e.g. 3.12")
    args = p.parse_args(argv)
    if not args.train_minutes > 0:
        p.error(f"--train-minutes {args.train_minutes}: must be > 0")
    if args.train_epochs < 0:
        p.error(f"--train-epochs {args.train_epochs}: must be >= 0 (0 = sized by the bench's rate)")
    args.skip = [name for name in args.skip.split(",") if name]
    if unknown := sorted(set(args.skip) - set(STEPS)):
        p.error(f"--skip {','.join(unknown)}: not a step; the steps are {', '.join(STEPS)}")
    return args


# --- wheels ------------------------------------------------------------------------------------------------

def carried_distributions():
    """{name: version} of this environment's distributions that the GPU machine may lack (not torch's stack)."""
    found = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"].lower().replace("_", "-")
        if not NOT_CARRIED.match(name):
            found[name] = dist.version
    return dict(sorted(found.items()))


def download_wheels(folder, python_version):
    target = ["--only-binary=:all:", "--python-version", python_version] if python_version else []
    Path(folder).mkdir(parents=True, exist_ok=True)
    specs = [f"{name}=={version}" for name, version in carried_distributions().items()]
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(folder), *target, *specs],
                   check=True)
    print(f"wrote the wheels of {len(specs)} distributions to {folder}")


def installed(name):
    try:
        importlib.metadata.version(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def wheel_name(path):
    """The distribution a wheel file holds, normalised: 'segmentation_models_pytorch-0.6.0-...' -> its name."""
    return path.name.split("-")[0].lower().replace("_", "-")


def install_missing(folder, log):
    """Install, without dependencies, the wheels in ``folder`` whose distribution is not installed."""
    wheels = sorted(Path(folder).glob("*.whl")) if Path(folder).is_dir() else []
    missing = [w for w in wheels if not installed(wheel_name(w))]
    if missing:
        run_logged([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", *map(str, missing)], log)
    return {"wheels_found": len(wheels), "installed": [wheel_name(w) for w in missing]}


# --- steps ------------------------------------------------------------------------------------------------

def run_logged(command, log, timeout=None):
    """Run ``command`` in the project root, its output to ``log`` after a line with the command; (seconds, exit
    status)."""
    command = [str(c) for c in command]
    start = time.perf_counter()
    with open(log, "w") as out:
        out.write("$ " + shlex.join(command) + "\n")
        out.flush()  # before the child's output, which goes to the same file
        done = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                              timeout=timeout)
    return time.perf_counter() - start, done.returncode


def cuda_tests(out, select):
    junit = out / "pytest_cuda.xml"
    # -n 0: one process holds the GPU, not the suite's two workers
    seconds, code = run_logged([sys.executable, "-m", "pytest", "-q", "-n", "0", "-m", "cuda", "-p", "no:cacheprovider",
                                f"--junitxml={junit}", *(["-k", select] if select else []), "tests/test_cuda.py"],
                               out / "pytest_cuda.log")
    text = junit.read_text() if junit.is_file() else ""
    counts = {key: int(m.group(1)) if (m := re.search(rf'{key}="(\d+)"', text)) else None
              for key in ("tests", "failures", "errors", "skipped")}
    return {"seconds": round(seconds, 1), "exit_status": code, **counts}, code in (0, 5)


def bench(out, sizes, data_root):
    result = out / "bench.json"
    seconds, code = run_logged([sys.executable, "bench.py", "--device", sizes["device"], "--amp", "--channels-last",
                                "--archs", sizes["archs"], "--recipes", sizes["bench_recipes"], "--model-size",
                                sizes["img_size"], "--img-size", sizes["img_size"], "--batch-size",
                                sizes["batch_size"], "--steps", sizes["bench_steps"], "--tta", sizes["tta"],
                                "--loader-batches", sizes["loader_batches"],
                                "--loader-seconds", sizes["loader_seconds"],
                                "--data-root", data_root, "--split", "train", "--max-images", 512,
                                "--cache-dir", out / "cache", "--out", result], out / "bench.log")
    figures = json.loads(result.read_text()) if code == 0 else {}
    return {"seconds": round(seconds, 1), "exit_status": code, **{k: figures.get(k) for k in (
        "machine", "stages", "augment_share", "loader_headroom")}}, code == 0


def make_data(out, sizes):
    root = out / "synthetic"
    seconds, code = run_logged([sys.executable, "-m", "data.synthetic", "--out", root, "--train", sizes["train"],
                                "--eval", sizes["eval"], "--seed", 1, "--size", sizes["img_size"], "--versions", 1],
                               out / "synthetic.log")
    return {"seconds": round(seconds, 1), "exit_status": code, "train_hands": sizes["train"],
            "eval_hands": sizes["eval"]}, code == 0


def epochs_for(minutes, rate, images):
    """Whole epochs of ``images`` that fit ``minutes`` at ``rate`` images/s (at least 1)."""
    return max(1, math.floor(60 * minutes * rate / images)) if rate else 1


def train_and_predict(out, sizes, minutes, rate, epochs=0):
    run, data = out / "run", out / "synthetic"
    # 5 % of the hands are held out for validation; a quarter of the time left for loading, validation, averaging and
    # the final stage's larger images
    epochs = epochs or max(2, min(epochs_for(0.75 * minutes, rate, 0.95 * sizes["train"]),
                                  sizes["max_epochs"] or math.inf))
    # at least one epoch in the final stage, which a short check would otherwise round away
    stages = [{"fraction": max(sizes["final_fraction"], 1 / epochs), "img_size": sizes["final_size"]}]
    # from random weights: the check runs offline, and the GPU's speed and correctness are its subject, not ImageNet's
    train_s, code = run_logged([sys.executable, "train.py", "--recipe", sizes["recipe"], "--data-root", data,
                                "--img-size", sizes["img_size"], "--set", f"stages={json.dumps(stages)}",
                                "--pretrained", "none",
                                "--device", sizes["device"], "--epochs", epochs, "--workers", sizes["workers"],
                                "--out", run], out / "train.log")
    figures = {"recipe": sizes["recipe"], "epochs": epochs, "stages": stages, "train_seconds": round(train_s, 1),
               "exit_status": code}
    if code != 0:
        return figures, False
    prefix = out / "prediction"
    predict_s, code = run_logged([sys.executable, "predict.py", "--ckpt", run / "best.pt", "--data-root", data,
                                  "--split", "evaluation", "--tta", sizes["tta"], "--device", sizes["device"],
                                  "--workers", sizes["workers"], "--out", prefix], out / "predict.log")
    figures.update(predict_seconds=round(predict_s, 1), predict_exit_status=code)
    if code == 0:
        scores = json.loads(prefix.with_suffix(".metrics.json").read_text())["reflections_allowed"]
        summary = json.loads((run / "summary.json").read_text())
        figures.update(pa_mpjpe_mm=scores["pa_mpjpe_mm"],
                       fraction_of_constant_shape=scores["fraction_of_constant_shape"],
                       predict_images_per_s=round(sizes["eval"] / predict_s, 1), tta=sizes["tta"],
                       train_images_per_s=summary.get("train_images_per_s"), stage_records=summary.get("stages"),
                       predicted_at_px=summary.get("img_size"))
    return figures, code == 0


def write(out, report):
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))


def main(argv=None):
    args = parse_args(argv)
    if args.download_wheels:
        return download_wheels(args.download_wheels, args.python_version)
    sizes = DRY if args.dry_run else FULL
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    report = {"dry_run": args.dry_run, "sizes": sizes, "skipped": args.skip, "steps": {}}
    write(out, report)
    ok = True

    def step(name, function, *step_args):
        nonlocal ok
        if name in args.skip:
            return {}
        start = time.perf_counter()
        figures, passed = function(*step_args)
        report["steps"][name] = {**figures, "passed": passed, "wall_s": round(time.perf_counter() - start, 1)}
        ok &= passed
        write(out, report)
        print(f"{name}: {'passed' if passed else 'FAILED'} in {report['steps'][name]['wall_s']} s", flush=True)
        return figures

    step("install", lambda: (install_missing(args.wheels, out / "install.log"), True))
    step("pytest_cuda", cuda_tests, out, args.cuda_tests)
    step("synthetic_set", make_data, out, sizes)
    figures = step("bench", bench, out, sizes, out / "synthetic")
    rate = ((figures.get("stages") or {}).get(f"train_step/{sizes['recipe']}"))
    step("train_and_predict", train_and_predict, out, sizes, args.train_minutes, rate, args.train_epochs)
    print(f"wrote {out / 'gpu_check.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
