"""Throughput of every stage of training and prediction, in images per second, on one device.

    python bench.py --device cuda --amp --channels-last                       # all archs, 224 px loaders, batch 32
    python bench.py --device cpu --archs effb0_1d,ghost_lite --img-size 128 --batch-size 8 --steps 3

Stages (one figure each, written to bench.json with the machine and the settings):
  loader_jpeg, loader_cache   make_loader batches at --img-size delivered to the device (to_device, pinned
                              memory on CUDA), decoding the JPEGs per sample / reading the decoded cache;
                              total images over total time (at least --loader-batches batches and
                              --loader-seconds), after --warmup batches
  augment_default, augment_full
                              augment.Augmenter on a device batch: the training default set and every
                              augmentation, at the default chances (AUG_DEFAULTS p)
  augment/NAME                the recipe's own augmentations on a device batch at its input size
  train_step/NAME             forward + backward + optimizer step of the recipe (model options, loss
                              weights, optimizer) at its input size (or --model-size), median step; NAME is
                              an arch of --archs (its own recipe) or a recipe of --recipes
  predict_tta/NAME            inference.predict_batch with --tta rotations, run in chunks of at most
                              inference.TTA_IMAGES_PER_FORWARD images per forward; per input image
bench.json also gives, per NAME, the augmentation share of a training step (augment / (augment + train_step)
time) and how many times over the cached loader feeds it.
Timings on CUDA synchronise before the clock is read. --amp (bf16 on GPUs with native bf16, else fp16),
--channels-last and --compile act as in train.py. The data is the synthetic set unless --data-root is given.
"""
import argparse
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import models
from training import recipes
from core import locations, precision
from core.common import UserError, atomic_write, check_minimums, check_writable, cli, median_seconds, usable_cores
from core.device import resolve_device, synchronizer
from core.json_files import json_text
from data import augment, resolve_or_generate_data_root
from data.dataset import make_dataset
from data.loader import make_loader, to_device
from data.readers import load_split
from training.step import forward_loss, optimizer_step
from prediction.inference import predict_batch
from training.optimization import make_optimizer
from training.setup import make_model


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--archs", default="all", help="comma-separated registered archs, 'all' or 'none'")
    p.add_argument("--recipes", default="", help="comma-separated recipes of recipes.py to time beside the archs")
    p.add_argument("--img-size", type=int, default=224, help="loader and augmentation input size")
    p.add_argument("--model-size", type=int, default=None, help="train/predict input size (default: each "
                                                                 "arch's recipe size)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="timed steps per augmentation / model stage")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps (and loader batches) before each stage")
    p.add_argument("--loader-batches", type=int, default=200, help="timed batches per loader stage (at least)")
    p.add_argument("--loader-seconds", type=float, default=3.0, help="keep timing a loader until this long")
    p.add_argument("--workers", type=int, default=-1, help="loader processes (-1: sized to the machine)")
    p.add_argument("--tta", type=int, default=10, help="rotations of the predict stage")
    p.add_argument("--amp", action="store_true", help="mixed precision on CUDA (bf16 where native, else fp16); none on "
                                                      "the CPU")
    p.add_argument("--cpu-bf16", action="store_true", help="bf16 autocast of the training step on a CPU with bf16 "
                                                           "instructions (train.py's cpu_bf16)")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of torch (default: torch's)")
    p.add_argument("--data-root", default=None, help="dataset folder (default: the synthetic set)")
    p.add_argument("--split", default="train")
    p.add_argument("--max-images", type=int, default=2000, help="images of the split to use (0: all)")
    locations.add_flags(p, "cache", "synthetic")
    p.add_argument("--out", default="bench.json")
    args = p.parse_args(argv)
    locations.apply_flags(args, "cache", "synthetic")
    check_minimums(args, {"img_size": 1, "batch_size": 1, "steps": 1, "loader_batches": 1, "tta": 1, "threads": 1,
                          "model_size": 1, "warmup": 0, "max_images": 0})
    if not (args.loader_seconds >= 0 and math.isfinite(args.loader_seconds)):
        raise UserError(f"--loader-seconds {args.loader_seconds}: must be a number >= 0")
    check_writable(Path(args.out).parent, "the folder of --out")  # before the measurements, not after
    if Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a folder; give a file name such as bench.json")
    return args


def parse_archs(text):
    if text == "none":
        return []
    names = models.list_models() if text == "all" else [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        models.model_entry(name)  # an unknown name lists the valid ones
    return names


def machine(device):
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    cores = usable_cores()
    return {"device": str(device), "cpu": cpu, "cores": cores,
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "torch": torch.__version__, "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
            "load_average_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


# --- stages ------------------------------------------------------------------------------------------------

def loader_rate(dataset, args, device):
    """Images per second that make_loader delivers to ``device``: total images over total time, for at least
    ``--loader-batches`` batches and ``--loader-seconds``."""
    if len(dataset) < args.batch_size:
        raise UserError(f"the split has {len(dataset)} images, fewer than one batch of {args.batch_size}; "
                        f"lower --batch-size")
    loader = make_loader(dataset, args.batch_size, train=True, workers=args.workers, pin_memory=device.type == "cuda")

    def batches():
        epoch = 0
        while True:
            loader.sampler.set_epoch(epoch)
            epoch += 1
            yield from loader

    stream, sync = batches(), synchronizer(device)
    for _ in range(args.warmup):
        to_device(next(stream), device)
    sync()
    start, images, batches = time.perf_counter(), 0, 0
    while batches < args.loader_batches or time.perf_counter() - start < args.loader_seconds:
        images += to_device(next(stream), device)["image"].shape[0]
        batches += 1
    sync()
    return images / (time.perf_counter() - start)


def device_batch(dataset, batch_size, device):
    """The first ``batch_size`` samples (repeated when the split is smaller), batched on ``device``."""
    rows = np.arange(batch_size) % len(dataset)
    return to_device(dataset.__getitems__(rows), device)


def augment_rate(augmenter, batch, args, device):
    seconds = median_seconds(lambda: augmenter(batch), args.steps, args.warmup, synchronizer(device))
    return batch["image"].shape[0] / seconds


def parse_recipes(text):
    names = [recipes.current_name(n.strip(), print) for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in recipes.RECIPES]
    if unknown:
        raise UserError(f"--recipes {unknown[0]}: no such recipe; valid names: {', '.join(recipes.recipe_names())}")
    return names


def timed_configs(args):
    """[(name, resolved config)]: each arch of --archs with its own recipe, then each recipe of --recipes."""
    names = parse_archs(args.archs) + parse_recipes(args.recipes)
    return [(name, recipes.recipe_config(name)) for name in dict.fromkeys(names)]


def train_step_rate(config, batch, args, device):
    """Images per second of one optimisation step of ``config['arch']`` on a fixed augmented batch."""
    model = make_model(config, device, args.channels_last).train()
    optimizer = make_optimizer(model, config)
    config = {**config, "amp": args.amp, "cpu_bf16": args.cpu_bf16}
    scaler = precision.choose(device, args.amp, args.cpu_bf16).grad_scaler()
    wrapped = torch.compile(model) if args.compile else model

    def step():  # the trainer's step: the same loss, clipping and optimiser step (no schedule, no EMA)
        loss, _ = forward_loss(wrapped, batch, config, device, args.channels_last)
        scaler.scale(loss).backward()
        optimizer_step(model, optimizer, scaler, config["grad_clip"])

    seconds = median_seconds(step, args.steps, args.warmup, synchronizer(device))
    return batch["image"].shape[0] / seconds, model


def predict_rate(model, images, args, device):
    wrapped = torch.compile(model.eval()) if args.compile else model.eval()
    step = lambda: predict_batch(wrapped, images, tta=args.tta, amp=args.amp, channels_last=args.channels_last)
    return images.shape[0] / median_seconds(step, args.steps, args.warmup, synchronizer(device))


# --- the run ------------------------------------------------------------------------------------------------

def run(args):
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one input size per stage
    entries = timed_configs(args)
    split = load_split(resolve_or_generate_data_root(args.data_root), args.split)
    if args.max_images and len(split) > args.max_images:
        split = split.subset(np.arange(args.max_images))
    datasets = {}

    def dataset(size, cache=True):
        if (size, cache) not in datasets:
            datasets[size, cache] = make_dataset(split, size, cache=cache, cache_root=locations.root("cache"))
        return datasets[size, cache]

    rows = []

    def record(stage, rate, size, batch_size, detail=""):
        rows.append({"stage": stage, "images_per_s": round(rate, 1), "px": size, "batch": batch_size,
                     "detail": detail})
        print(f"  {stage:<28} {rate:>10.1f} images/s  ({size} px, batch {batch_size}{', ' if detail else ''}"
              f"{detail})", flush=True)

    info = machine(device)
    print(f"bench on {info['gpu'] or info['cpu']} ({device}, {info['cores']} cores, torch {info['torch']}, "
          f"{info['torch_threads']} threads), load average {info['load_average_start']}")
    size, b = args.img_size, args.batch_size
    for model_size in {size} | {args.model_size or config["img_size"] for _, config in entries}:
        dataset(model_size)  # decoded caches built (once) before any clock runs
    record("loader_jpeg", loader_rate(dataset(size, cache=False), args, device), size, b, "JPEG decode per sample")
    record("loader_cache", loader_rate(dataset(size), args, device), size, b, "decoded uint8 cache")
    batch = device_batch(dataset(size), b, device)
    for stage, names, detail in (("augment_default", augment.TRAIN_DEFAULT_AUGS, ",".join(augment.TRAIN_DEFAULT_AUGS)),
                                 ("augment_full", augment.AUG_NAMES, "all, default p")):
        augmenter = augment.Augmenter(names, augment.resolve_options(), size, device, seed=0)
        record(stage, augment_rate(augmenter, batch, args, device), size, b, detail)
    for name, config in entries:
        config["img_size"] = model_size = args.model_size or config["img_size"]
        data = device_batch(dataset(model_size), b, device)
        augmenter = augment.Augmenter(config["augs"], augment.resolve_options(config["aug"]), model_size, device,
                                      seed=0)
        record(f"augment/{name}", augment_rate(augmenter, data, args, device), model_size, b, config["augs"])
        rate, model = train_step_rate(config, augmenter(data), args, device)
        chosen = precision.choose(device, args.amp, args.cpu_bf16).name
        record(f"train_step/{name}", rate, model_size, b, f"{config['arch']}, {config['optimizer']}, loss "
                                                          f"{','.join(config['loss'])}, {chosen}")
        record(f"predict_tta/{name}", predict_rate(model, data["image"], args, device), model_size, b,
               f"tta {args.tta}")
        del model
    info["load_average_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return rows, info


def loader_headroom(rows):
    """name -> how many times over the cached loader feeds that recipe's training step."""
    rates = {r["stage"]: r["images_per_s"] for r in rows}
    return {stage.split("/", 1)[1]: round(rates["loader_cache"] / rate, 1)
            for stage, rate in rates.items() if stage.startswith("train_step/")}


def augment_share(rows):
    """name -> the share of a training step's time spent augmenting: augment / (augment + train_step)."""
    rates = {r["stage"]: r["images_per_s"] for r in rows}
    shares = {}
    for stage, rate in rates.items():
        if stage.startswith("train_step/"):
            name = stage.split("/", 1)[1]
            augment_s, step_s = 1.0 / rates[f"augment/{name}"], 1.0 / rate
            shares[name] = round(augment_s / (augment_s + step_s), 4)
    return shares


def write_json(path, rows, info, args):
    settings = {k: getattr(args, k) for k in ("device", "img_size", "model_size", "batch_size", "steps", "warmup",
                                               "loader_batches", "loader_seconds", "workers", "tta", "amp",
                                               "cpu_bf16", "channels_last", "compile", "threads", "data_root", "split",
                                               "max_images")}
    settings["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    result = {"machine": info, "settings": settings, "stages": {r["stage"]: r["images_per_s"] for r in rows},
              "loader_headroom": loader_headroom(rows), "augment_share": augment_share(rows), "rows": rows}
    with atomic_write(path) as tmp:
        tmp.write_text(json_text(result, indent=2))


@cli
def main(argv=None):
    args = parse_args(argv)
    rows, info = run(args)
    table = pd.DataFrame(rows)
    print()
    print(table.to_string(index=False))
    shares = augment_share(rows)
    for name, times in loader_headroom(rows).items():
        print(f"{name}: the cached loader feeds its training step {times:g} times over; augmentation takes "
              f"{100 * shares[name]:.1f} % of a step")
    write_json(args.out, rows, info, args)
    print(f"wrote {args.out} (load average {info['load_average_start']} at the start, {info['load_average_end']} "
          f"at the end)")


if __name__ == "__main__":
    main()
