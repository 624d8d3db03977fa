"""The background bank: a folder of images (--backgrounds DIR) cropped to the input size, kept on the device."""
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from core.common import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def load_backgrounds(folder, size, device, max_images=2000):
    """Images under ``folder`` centre-cropped and resized to size x size: uint8 (N, 3, S, S) on ``device``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--backgrounds {folder}: not a folder; give a folder of background images "
                        f"({', '.join(IMAGE_SUFFIXES)})")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:max_images]
    if not paths:
        raise UserError(f"--backgrounds {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found in it or its "
                        f"subfolders; add some or leave out --backgrounds to generate backgrounds")
    bank = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image = ImageOps.fit(image.convert("RGB"), (size, size), Image.Resampling.BILINEAR)
        except OSError as err:
            raise UserError(f"cannot decode background {path} ({err}); remove or replace it") from None
        bank.append(torch.from_numpy(np.asarray(image).transpose(2, 0, 1).copy()))
    return torch.stack(bank).to(device)
