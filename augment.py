"""Preview the batched augmentations (``data.augment``) on samples of a dataset: the images as augmented, their
joints drawn.

    python augment.py --preview [--data-root DIR] [--n 16] [--seed 0] [--augs rotate,background] --out DIR

Every named augmentation runs with p = 1, so each image shows it. Writes preview.png (the grid, keypoints drawn)
and preview.npz (images as augmented, without drawings; uv; idx, the source indices). Their speed is bench.py's.
"""
import argparse
import json
import math

import numpy as np
import torch
from PIL import Image, ImageDraw

from core import locations
from core.common import UserError, atomic_write, check_minimums, check_writable, cli, ensure_writable_folder
from core.device import resolve_device
from core.pictures import draw_skeleton
from data import resolve_or_generate_data_root
from data.augment import AUG_NAMES, TRAIN_DEFAULT_AUGS, Augmenter, forced_options, parse_augs
from data.dataset import HandDataset
from data.readers import load_split


def draw_grid(images, uv, visible, path):
    """Save a grid of (N, H, W, 3) uint8 images with their joints (N, 21, 2) and bones drawn."""
    n, h, w = images.shape[:3]
    cols = math.ceil(math.sqrt(n))
    canvas = Image.new("RGB", (cols * w, math.ceil(n / cols) * h))
    for i in range(n):
        canvas.paste(Image.fromarray(images[i]), ((i % cols) * w, (i // cols) * h))
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        draw_skeleton(draw, uv[i], visible[i], offset=((i % cols) * w, (i // cols) * h))
    canvas.save(path)


def _json_options(text):
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"--options is not valid JSON ({err}); "
                        f"e.g. '{{\"rotate\": {{\"max_deg\": 30}}}}'") from None


def run_preview(args):
    if args.n < 1:
        raise UserError(f"--n {args.n}: preview at least one sample")
    names = parse_augs(args.augs)
    options = forced_options(names, _json_options(args.options))
    device = resolve_device(args.device)
    root = resolve_or_generate_data_root(args.data_root)
    split = load_split(root, args.split)
    if not split.labelled:
        raise UserError(f"split {split.name!r} at {root} has no labels; preview a labelled split (train, val)")
    dataset = HandDataset(split, args.img_size)
    # Sample choice has its own RNG, so the same --seed shows the same samples whatever --augs says.
    idx = np.random.default_rng(args.seed).choice(len(dataset), min(args.n, len(dataset)), replace=False)
    samples = [dataset[int(i)] for i in idx]
    batch = {key: torch.stack([s[key] for s in samples]).to(device) for key in samples[0]}
    augmenter = Augmenter(names, options, args.img_size, device, backgrounds=args.backgrounds, seed=args.seed)
    out = augmenter(batch)
    images = (out["image"] * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    uv, visible = out["uvd"][..., :2].cpu().numpy(), out["visible"].cpu().numpy()
    out_dir = ensure_writable_folder(args.out, "--out")
    with atomic_write(out_dir / "preview.npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, images=images, uv=uv.astype(np.float32), idx=idx.astype(np.int64),
                 mask=out["mask"].cpu().numpy(), visible=visible, flipped=out["flipped"].cpu().numpy())
    draw_grid(images, uv, visible, out_dir / "preview.png")
    print(f"wrote {out_dir / 'preview.png'} and preview.npz: {len(idx)} {split.name} samples of {root}, "
          f"augs: {', '.join(names) or 'none'} (each applied with p=1)")


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description="Preview the batched augmentations (their speed: bench.py).")
    parser.add_argument("--preview", action="store_true", required=True,
                        help="write preview.png and preview.npz to --out")
    parser.add_argument("--data-root", default=None, help="dataset folder (default: the embedded synthetic set)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--n", type=int, default=16, help="samples to preview")
    parser.add_argument("--seed", type=int, default=0, help="picks the samples and the augmentation draws")
    parser.add_argument("--augs", default=",".join(TRAIN_DEFAULT_AUGS),
                        help=f"comma-separated from {', '.join(AUG_NAMES)}, or 'none'")
    parser.add_argument("--options", default=None, help="JSON overrides of AUG_DEFAULTS, e.g. "
                                                        "'{\"occlude\": {\"cover\": [0.2, 0.3]}}'")
    parser.add_argument("--backgrounds", default=None, help="folder of background images (default: generated)")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--out", default=None, help="preview output folder")
    locations.add_flags(parser, "synthetic")
    args = parser.parse_args(argv)
    locations.apply_flags(args, "synthetic")
    if args.out is None:
        parser.error("--preview needs --out DIR")
    check_minimums(args, {"img_size": 1})
    check_writable(args.out, "--out")
    run_preview(args)


if __name__ == "__main__":
    main()
