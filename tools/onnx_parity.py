"""Every registered arch through ONNX: the largest joint difference between PyTorch and onnxruntime over a split,
and the time per image of each backend on this machine's CPU (docs/results.md keeps the export table).

    python tools/onnx_parity.py --out runs/onnx_parity.json                    # every arch, untrained
    python tools/onnx_parity.py --ckpt runs/effb0_unet_64_cpu_s0/best.pt --ckpt runs/hourglass_attn_64_cpu_s0/best.pt

An arch without a --ckpt is built at its CPU recipe (its ``<arch>``-family ``*_cpu`` recipe, else its own) from
random weights, its BatchNorm statistics set by a few batches of the split's images (so activations are those
of real inputs, not of a reset network). Both backends predict every image of the split (tta 1, fp32, batches of
16); the difference is the largest over all joints of u, v (input pixels) and of the root-relative depth (mm).
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import models  # noqa: E402
from training import recipes  # noqa: E402
from data import resolve_or_generate_data_root  # noqa: E402
from data.readers import load_split  # noqa: E402
from models.checkpoints import load_model, read_checkpoint  # noqa: E402
from prediction.inference import predict_batch  # noqa: E402
from prediction.onnx_backend import OnnxModel, export_graph, input_images, uvd_differences, within_tolerance  # noqa: E402
from core.json_files import json_text  # noqa: E402

BATCH = 16


def cpu_recipe(arch):
    """The recipe a CPU run of ``arch`` uses: a *_cpu recipe training it, else the arch's own."""
    names = [n for n in recipes.RECIPES if n.endswith("_cpu") and recipes.RECIPES[n].get("arch") == arch]
    return recipes.recipe_config(sorted(names, key=len)[0] if names else arch)


def untrained(arch, images):
    """``arch`` at its CPU recipe, random weights, BatchNorm statistics from ``images``."""
    config = cpu_recipe(arch)
    torch.manual_seed(0)
    model = models.create_model(arch, pretrained="none", **config["model"]).train()
    with torch.no_grad():
        for first in range(0, min(len(images), 4 * BATCH), BATCH):
            model(models.prepare_images(images[first:first + BATCH]))
    return model.eval()


def predict_all(net, images):
    """(uvd (N, 21, 3), seconds per image) of ``net`` over ``images`` in batches."""
    start, parts = time.perf_counter(), []
    for first in range(0, len(images), BATCH):
        parts.append(predict_batch(net, images[first:first + BATCH]))
    return torch.cat(parts).numpy(), (time.perf_counter() - start) / len(images)


def parity_row(name, model, size, split):
    images = input_images(split, size)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        started = time.perf_counter()
        export_graph(model, path, size)
        export_s = time.perf_counter() - started
        ort = OnnxModel(path)
        predict_all(ort, images[:BATCH])                                                   # warm-up
        ort_uvd, ort_s = predict_all(ort, images)
    predict_all(model, images[:BATCH])
    torch_uvd, torch_s = predict_all(model, images)
    uv_px, depth_mm = uvd_differences(torch_uvd, ort_uvd)
    return {"model": name, "img_size": size, "images": len(images), "max_uv_px": uv_px, "max_depth_mm": depth_mm,
            "within_tolerance": within_tolerance(uv_px, depth_mm), "torch_ms_per_image": 1e3 * torch_s,
            "onnxruntime_ms_per_image": 1e3 * ort_s, "export_s": export_s}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", action="append", default=[], help="a trained checkpoint (its arch is then not built "
                                                               "untrained)")
    p.add_argument("--split", default="evaluation")
    p.add_argument("--out", default="runs/onnx_parity.json")
    args = p.parse_args(argv)
    split = load_split(resolve_or_generate_data_root(None), args.split)
    rows, trained = [], set()
    for ckpt in args.ckpt:
        state = read_checkpoint(ckpt)
        trained.add(state["config"]["arch"])
        rows.append(parity_row(f"{state['config']['arch']} ({ckpt})", load_model(state, ckpt),
                               state["config"]["img_size"], split))
        print(json_text(rows[-1]), flush=True)
    for arch in models.list_models():
        if arch not in trained:
            size = cpu_recipe(arch)["img_size"]
            rows.append(parity_row(f"{arch} (untrained)", untrained(arch, input_images(split, size)), size, split))
            print(json_text(rows[-1]), flush=True)
    Path(args.out).write_text(json_text(rows, indent=2))


if __name__ == "__main__":
    main()
