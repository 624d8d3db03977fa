"""Batched augmentation on the training device, with labels that stay on the pixels.

    python augment.py --preview [--data-root DIR] [--n 16] [--seed 0] [--augs rotate,background] --out DIR
    python augment.py --bench [--img-size 224] [--batch-size 32] [--device cpu] [--threads N]

Pipeline (fixed order, whatever order --augs names them):
  1. geometry: flip, scale, rotate, translate composed into ONE 2x3 affine per sample (``geometry``), applied
     to image, mask, uv and K through the codec; d unchanged. ``affine`` is returned (identity when none).
  2. background: pixels outside the hand mask replaced (only where ``has_mask``); hand pixels untouched.
  3. occlude: convex polygons, ellipses and texture patches covering a drawn fraction of the hand.
  4. color, blur, noise: photometric, labels unchanged.

Policies
* Out of frame: joints pushed outside the image keep their (moved) labels; ``visible`` (B, 21) is False
  exactly for them (uv outside [-0.5, S - 0.5]) and the losses mask their uv terms.
* Flip: a mirror about the vertical centre line, composed into the affine. FreiHAND shows right hands only,
  so a flipped image shows a LEFT hand; joint identities stay anatomical (joint 1 is still the thumb base),
  d is unchanged, and K moves with the image so unprojecting the flipped uv returns the original xyz.
  ``flipped`` (B,) says which samples show a left hand. Not in the default set: both seeds found it hurt.
* Occlusion: the target fraction of the hand area (the mask; discs around the visible joints when the
  sample has no mask) is drawn from ``cover``; shapes are added until the covered fraction is closest to it.
* Only named augmentations run (train's --augs; TRAIN_DEFAULT_AUGS = rotate, as seed 000); once named, p
  is the chance per sample. Preview: every named augmentation runs with p = 1, so each image shows it.
* Output ``image`` is always float32 in [0, 1], whatever ran, so downstream code has one path.
"""
import argparse
import copy
import json
import math
from pathlib import Path

import kornia
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageOps

from core import geometry, locations
from core.common import (UserError, atomic_write, check_minimums, check_writable, cli, ensure_writable_folder,
                         median_seconds, resolve_device, synchronizer, unit_float)
from core.pictures import draw_skeleton
from data import resolve_or_generate_data_root
from data.dataset import HandDataset
from data.readers import load_split

AUG_NAMES = ("flip", "scale", "rotate", "translate", "background", "occlude", "color", "blur", "noise")
TRAIN_DEFAULT_AUGS = ("rotate",)  # seed 000's final recipe
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
BACKGROUND_KINDS = ("noise", "gradient", "shapes", "other")

# One visible place for every option; recipes override with resolve_options({...}). p = chance per sample.
AUG_DEFAULTS = {
    "flip": {"p": 0.5},                                    # mirror -> a left hand (see Policies)
    "scale": {"p": 1.0, "range": (0.85, 1.15)},            # zoom factor about the centre, uniform
    "rotate": {"p": 1.0, "max_deg": 180.0},                # uniform in [-max_deg, max_deg] (seed 000)
    "translate": {"p": 1.0, "max_frac": 0.08},             # shift per axis, fraction of the input side
    "background": {"p": 0.5,                               # seed 001; needs a mask
                   "sources": {"noise": 1.0, "gradient": 1.0, "shapes": 1.0, "other": 0.0},
                   "max_images": 2000},                    # bank size cap for --backgrounds DIR
    "occlude": {"p": 0.5, "cover": (0.1, 0.4),             # fraction of the hand area covered
                "max_shapes": 6, "hand_colour": 0.3},      # chance a shape takes a colour of the hand
    "color": {"p": 0.8, "brightness": 0.15, "contrast": 0.2, "saturation": 0.2, "hue": 0.03},
    "blur": {"p": 0.2, "sigma": (0.3, 1.5)},               # Gaussian sigma in pixels
    "noise": {"p": 0.2, "std": (0.005, 0.04)},             # additive Gaussian, image in [0, 1]
}
# 'other' (another sample's background, its own hand cut out through its mask) has weight 0: on FreiHAND
# the masked image version has the green screen behind the hand, and the others carry no mask.


# --- options --------------------------------------------------------------------------------------------

def parse_augs(text):
    """'rotate,background' -> ('rotate', 'background') in pipeline order; 'none' or '' -> ()."""
    names = [n.strip().lower() for n in str(text).split(",") if n.strip()]
    if names == ["none"]:
        return ()
    if "none" in names:
        raise UserError(f"augmentations {text!r}: 'none' cannot be combined with other names")
    unknown = [n for n in names if n not in AUG_NAMES]
    if unknown:
        raise UserError(f"unknown augmentation {unknown[0]!r}; valid names: {', '.join(AUG_NAMES)} "
                        f"(comma-separated), or 'none'")
    return tuple(n for n in AUG_NAMES if n in names)


def _check_value(where, default, value):
    """``value`` converted to the type of ``default``, or a UserError naming the option."""
    is_num = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise UserError(f"augment option {where}: expected a dict, got {value!r}")
        return _merge(where, default, value)
    if isinstance(default, tuple):
        if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(map(is_num, value))
                and 0 <= value[0] <= value[1] and (value[0] > 0 or where != "scale.range")):
            raise UserError(f"augment option {where}: expected a (low, high) pair of numbers with "
                            f"0 <= low <= high, got {value!r}")
        return (float(value[0]), float(value[1]))
    if isinstance(default, int) and not isinstance(default, bool):
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise UserError(f"augment option {where}: expected a positive integer, got {value!r}")
        return value
    if not (is_num(value) and value >= 0):
        raise UserError(f"augment option {where}: expected a non-negative number, got {value!r}")
    if where.rsplit(".", 1)[-1] in ("p", "hand_colour") and value > 1:
        raise UserError(f"augment option {where}: a probability must be in [0, 1], got {value!r}")
    return float(value)


def _merge(where, defaults, overrides):
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise UserError(f"unknown augment option {where + '.' if where else ''}{unknown[0]}; valid keys: "
                        f"{', '.join(defaults)}")
    merged = copy.deepcopy(defaults)
    for key, value in overrides.items():
        merged[key] = _check_value(f"{where + '.' if where else ''}{key}", defaults[key], value)
    return merged


def resolve_options(overrides=None):
    """AUG_DEFAULTS deep-merged with ``overrides`` ({'rotate': {'max_deg': 30}, ...}); checked keys and types."""
    if overrides is None:
        return copy.deepcopy(AUG_DEFAULTS)
    if not isinstance(overrides, dict):
        raise UserError(f"augment options must be a dict of dicts, got {overrides!r}")
    return _merge("", AUG_DEFAULTS, overrides)


# --- warps and random draws -----------------------------------------------------------------------------

def warp_images(images, affines, size=None, mode="bilinear"):
    """(B, C, H, W) images through (B, 2, 3) source->destination pixel affines -> (B, C, size, size) float.

    The one place images are warped (training augmentation, TTA). Integer pixel centres on both sides
    (align_corners=True), zeros outside the source. uint8 input is scaled to [0, 1].
    """
    images = unit_float(images)
    dsize = (images.shape[-2], images.shape[-1]) if size is None else (size, size)
    return kornia.geometry.transform.warp_affine(images, affines.to(images), dsize, mode=mode,
                                                 padding_mode="zeros", align_corners=True)


def _uniform(lo, hi, shape, g, device):
    return lo + (hi - lo) * torch.rand(shape, generator=g, device=device)


def mirror_affine(flip, size):
    """(B, 2, 3): u -> size - 1 - u where ``flip`` (B,) bool, identity elsewhere (integer pixel centres)."""
    sign = 1.0 - 2.0 * flip.float()
    zero = torch.zeros_like(sign)
    row_u = torch.stack([sign, zero, (1.0 - sign) * (size - 1) / 2.0], -1)
    row_v = torch.stack([zero, zero + 1.0, zero], -1)
    return torch.stack([row_u, row_v], -2)


def _pixel_grid(size, device):
    """u (1, 1, S) and v (1, S, 1) pixel-centre coordinates, broadcasting to (B, S, S)."""
    r = torch.arange(size, dtype=torch.float32, device=device)
    return r.view(1, 1, size), r.view(1, size, 1)


def noise_texture(n, size, g, device):
    """(n, 3, S, S) smooth random colour texture in [0, 1]: three octaves with random weights, summed at a
    quarter of the resolution and upsampled once."""
    low = max(size // 4, 8)
    out = torch.zeros(n, 3, low, low, device=device)
    weights = torch.rand(n, 3, generator=g, device=device) + 0.05
    for octave, cells in enumerate((3, 10, low)):
        grid = torch.rand(n, 3, cells, cells, generator=g, device=device)
        out += weights[:, octave, None, None, None] * F.interpolate(grid, size=(low, low), mode="bilinear",
                                                                   align_corners=False)
    out = out / weights.sum(1)[:, None, None, None]
    return F.interpolate(out, size=(size, size), mode="bilinear", align_corners=False)


def gradient_texture(n, size, g, device):
    """(n, 3, S, S) linear ramp between two random colours in a random direction."""
    u, v = _pixel_grid(size, device)
    angle = _uniform(0, 2 * math.pi, (n,), g, device)[:, None, None]
    ramp = (u - size / 2) * torch.cos(angle) + (v - size / 2) * torch.sin(angle)   # (n, S, S)
    ramp = (ramp / (size * 0.71) + 0.5).clamp(0, 1)[:, None]
    low, high = torch.rand(2, n, 3, 1, 1, generator=g, device=device)
    return low + ramp * (high - low)


def clutter_texture(n, size, g, device):
    """(n, 3, S, S) a gradient under four random shapes of random colours."""
    out = gradient_texture(n, size, g, device)
    for _ in range(4):
        centre = torch.rand(n, 2, generator=g, device=device) * size
        inside, _kind = random_shapes(centre, _uniform(0.08, 0.3, (n,), g, device) * size, size, g)
        out = torch.where(inside[:, None], torch.rand(n, 3, 1, 1, generator=g, device=device), out)
    return out


def saturation_hue(x, saturation, hue):
    """(R, 3, S, S): chroma scaled by ``saturation`` (R,) and turned by ``hue`` (R,) radians, as one 3x3
    matrix per sample in kornia's YUV space (a linear stand-in for kornia.enhance's HSV path, ~20x cheaper)."""
    basis = torch.eye(3, device=x.device)[:, :, None, None]                  # three 1x1 pure-colour images
    to_yuv = kornia.color.rgb_to_yuv(basis)[..., 0, 0].T                     # (3, 3) kornia's constants
    c, s = torch.cos(hue) * saturation, torch.sin(hue) * saturation
    one, zero = torch.ones_like(c), torch.zeros_like(c)
    chroma = torch.stack([torch.stack(row, -1) for row in ((one, zero, zero), (zero, c, -s), (zero, s, c))], -2)
    matrix = torch.linalg.inv(to_yuv) @ chroma @ to_yuv                      # (R, 3, 3)
    return torch.einsum("rij,rjhw->rihw", matrix, x)


# --- shapes: rasterised on the device, batched ------------------------------------------------------------

MAX_VERTICES = 6


def ellipse_masks(centre, a, b, theta, size):
    """(N, S, S) bool: pixels inside ellipses of centre (N, 2), semi-axes a, b (N,), turned by theta (N,).

    With x = dx cos + dy sin, y = dy cos - dx sin: (x/a)^2 + (y/b)^2 <= 1, written as a quadratic in the
    pixel offsets dx (N, 1, S), dy (N, S, 1) so that only the final sums are full-size.
    """
    u, v = _pixel_grid(size, centre.device)
    col = lambda t: t[:, None, None]
    dx, dy = u - col(centre[:, 0]), v - col(centre[:, 1])
    cos, sin = torch.cos(theta), torch.sin(theta)
    qa, qc = (cos / a) ** 2 + (sin / b) ** 2, (sin / a) ** 2 + (cos / b) ** 2
    qb = 2 * cos * sin * (a ** -2 - b ** -2)
    return col(qa) * dx ** 2 + col(qc) * dy ** 2 + (col(qb) * dx) * dy <= 1.0


def polygon_masks(vertices, size):
    """(N, S, S) bool: pixels inside convex polygons (N, V, 2), vertices counter-clockwise in (u, v) algebra
    (clockwise on screen); a pixel is inside when it is left of every edge. Zero-length edges pass all."""
    u, v = _pixel_grid(size, vertices.device)
    col = lambda t: t[:, None, None]
    px, py = vertices[..., 0], vertices[..., 1]                                # (N, V)
    inside = torch.ones(len(vertices), size, size, dtype=torch.bool, device=vertices.device)
    for i in range(vertices.shape[1]):
        j = (i + 1) % vertices.shape[1]
        ex, ey = px[:, j] - px[:, i], py[:, j] - py[:, i]
        inside &= col(ex) * v - col(ex * py[:, i]) >= col(ey) * u - col(ey * px[:, i])  # cross >= 0
    return inside


def random_shapes(centre, radius, size, g):
    """One random shape per row, centred at ``centre`` (N, 2) with area about pi * radius^2 (N,).

    Returns (inside (N, S, S) bool, kind (N,) long): kind 0 ellipse, 1 convex polygon of 3-6 vertices,
    2 rectangular patch. Polygon vertices lie on the ellipse at increasing angles, so polygons are convex.
    """
    n, device = centre.shape[0], centre.device
    kind = torch.randint(0, 3, (n,), generator=g, device=device)
    aspect = torch.exp(_uniform(-0.5, 0.5, (n,), g, device))
    a, b = radius * aspect, radius / aspect                                    # semi-axes (N,)
    theta = _uniform(0, math.pi, (n,), g, device)
    # Rows with fewer than MAX_VERTICES vertices repeat their last one.
    count = torch.where(kind == 2, 4, torch.randint(3, MAX_VERTICES + 1, (n,), generator=g, device=device))
    k = torch.minimum(torch.arange(MAX_VERTICES, device=device)[None], count[:, None] - 1)   # (N, V)
    step = 2 * math.pi / count[:, None]
    jitter = torch.where(kind[:, None] == 2, 0.0, _uniform(-0.35, 0.35, (n, MAX_VERTICES), g, device))
    start = torch.where(kind == 2, math.pi / 4, _uniform(0, 2 * math.pi, (n,), g, device))
    phi = start[:, None] + step * (k + jitter.gather(1, k))                   # (N, V) increasing
    x, y = a[:, None] * torch.cos(phi), b[:, None] * torch.sin(phi)            # shape frame
    cos, sin = torch.cos(theta)[:, None], torch.sin(theta)[:, None]
    vertices = centre[:, None] + torch.stack([x * cos - y * sin, x * sin + y * cos], -1)   # (N, V, 2) pixels
    inside = torch.where((kind == 0)[:, None, None], ellipse_masks(centre, a, b, theta, size),
                         polygon_masks(vertices, size))
    return inside, kind


def joint_discs(uv, visible, size):
    """(B, S, S) bool: discs around the visible joints, a stand-in hand region where no mask exists."""
    u, v = _pixel_grid(size, uv.device)
    far = torch.where(visible, 0.0, 1e9)                                       # (B, 21)
    span = (uv.amax(1) - uv.amin(1)).norm(dim=-1)                              # (B,)
    radius2 = ((0.07 * span + 2.0) ** 2)[:, None, None]
    d2 = torch.full((uv.shape[0], size, size), 1e12, device=uv.device)
    for j in range(uv.shape[1]):
        du2 = (u - uv[:, j, 0, None, None]) ** 2 + far[:, j, None, None]          # (B, 1, S)
        d2 = torch.minimum(d2, du2 + (v - uv[:, j, 1, None, None]) ** 2)
    return d2 <= radius2


def place_occluders(hand, target, centres, g):
    """Shapes centred at ``centres`` (R, M, 2) sized to cover ``target`` (R,) of ``hand`` (R, S, S) bool.

    Each shape aims at 60 % of the coverage still missing; its radius uses the efficiency (hand pixels
    gained per shape pixel) of the previous shape, low where the hand is thin or scattered. Returns
    (shapes: list of M (R, S, S) bool, kinds (R, M), fractions (R, M) of the hand covered by the first m+1).
    """
    r, size, dev = hand.shape[0], hand.shape[-1], hand.device
    area = hand.flatten(1).sum(1).float()
    union = torch.zeros_like(hand)
    frac, efficiency = torch.zeros(r, device=dev), torch.full((r,), 0.5, device=dev)
    shapes, kinds, fractions = [], [], []
    for m in range(centres.shape[1]):
        want = (target - frac).clamp(min=0.02) * 0.6 * area                    # hand pixels to add
        radius = torch.sqrt(want / (efficiency * math.pi)) * _uniform(0.8, 1.2, (r,), g, dev)
        inside, kind = random_shapes(centres[:, m], radius.clamp(min=1.0), size, g)
        union = union | inside
        new_frac = (union & hand).flatten(1).sum(1) / area
        efficiency = ((new_frac - frac) * area / inside.flatten(1).sum(1).clamp(min=1)).clamp(0.05, 1.0)
        frac = new_frac
        shapes.append(inside)
        kinds.append(kind)
        fractions.append(frac)
    return shapes, torch.stack(kinds, 1), torch.stack(fractions, 1)


# --- background bank ------------------------------------------------------------------------------------

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


# --- the augmenter --------------------------------------------------------------------------------------

class Augmenter:
    """Applies the named augmentations to a batch of device tensors; see the module docstring."""

    def __init__(self, names, options, size, device, backgrounds=None, seed=None):
        self.names = parse_augs(names) if isinstance(names, str) else parse_augs(",".join(names) or "none")
        self.opt = resolve_options(options)
        if sum(self.opt["background"]["sources"].values()) <= 0:
            raise UserError("augment option background.sources: at least one weight must be positive")
        self.size, self.device = int(size), torch.device(device)
        self.bank = None
        if backgrounds is not None:  # loaded (and checked) whenever given
            self.bank = (backgrounds.to(self.device) if isinstance(backgrounds, torch.Tensor) else
                         load_backgrounds(backgrounds, self.size, self.device,
                                          self.opt["background"]["max_images"]))
        seed = int(torch.randint(0, 2 ** 62, (1,))) if seed is None else int(seed)  # global torch seed
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def _chance(self, name, n, g):
        """(n,) bool: which samples get ``name`` (never when it is not named)."""
        if name not in self.names:
            return torch.zeros(n, dtype=torch.bool, device=self.device)
        return torch.rand(n, generator=g, device=self.device) < self.opt[name]["p"]

    def __call__(self, batch, generator=None):
        """Augment a batch of device tensors: image (B, 3, S, S) uint8 or float in [0, 1], mask (B, S, S),
        has_mask (B,), uvd (B, 21, 3), K (B, 3, 3). ``generator``: a torch.Generator on the augmenter's device
        (default: its own). Returns a new dict: image float32 (B, 3, S, S) in [0, 1], mask uint8, uvd (uv
        moved, d unchanged), K moved, visible (B, 21), affine (B, 2, 3), flipped (B,), occluded (B,) fraction
        of the hand covered; other keys passed through (xyz stays valid: K moves with the image)."""
        g = self.generator if generator is None else generator
        out = dict(batch)
        image = unit_float(batch["image"])                                                # (B, 3, S, S)
        mask = batch["mask"].bool()                                                       # (B, S, S)
        has_mask = batch["has_mask"].bool()
        n, size = image.shape[0], image.shape[-1]
        if size != self.size:
            raise ValueError(f"Augmenter built for {self.size} px images got {size} px")
        affine, flipped = self.draw_affine(n, size, g)
        moved = (affine != torch.eye(2, 3, device=self.device)).flatten(1).any(1)     # (B,) not identity
        if moved.any():  # identity samples are left bit-exact
            rows = moved.nonzero()[:, 0]
            image, mask = image.clone(), mask.clone()
            warped = warp_images(torch.cat([image[rows], mask[rows, None].float()], 1), affine[rows])
            image[rows], mask[rows] = warped[:, :3], warped[:, 3] >= 0.5               # one warp for both
        uv, visible = None, None
        if "uvd" in batch:
            uvd = batch["uvd"].float()
            uv = geometry.apply_affine(affine, uvd[..., :2])
            out["uvd"] = torch.cat([uv, uvd[..., 2:]], -1)
            visible = ((uv >= -0.5) & (uv <= size - 0.5)).all(-1)                    # (B, 21)
            out["visible"] = visible
        if "K" in batch:
            out["K"] = geometry.transform_K(affine, batch["K"].float())
        image = self.swap_background(image, mask, has_mask, g)
        image, out["occluded"] = self.occlude(image, mask, has_mask, uv, visible, g)
        image = self.photometric(image, g)
        out.update(image=image.contiguous(), mask=mask.to(torch.uint8), affine=affine, flipped=flipped)
        return out

    def draw_affine(self, n, size, g):
        """(B, 2, 3) source -> augmented pixels: flip, then scale and rotate about the centre, then shift."""
        dev, opt = self.device, self.opt
        angle = _uniform(-opt["rotate"]["max_deg"], opt["rotate"]["max_deg"], (n,), g, dev)
        angle = torch.where(self._chance("rotate", n, g), angle, 0.0)
        scale = torch.where(self._chance("scale", n, g), _uniform(*opt["scale"]["range"], (n,), g, dev), 1.0)
        reach = opt["translate"]["max_frac"] * size
        shift = torch.where(self._chance("translate", n, g)[:, None], _uniform(-reach, reach, (n, 2), g, dev), 0.0)
        flipped = self._chance("flip", n, g)
        similarity = geometry.rotation_affine(angle, size, scale, shift)
        return geometry.compose_affine(similarity, mirror_affine(flipped, size)), flipped

    def swap_background(self, image, mask, has_mask, g):
        """Replace mask == 0 pixels of chosen samples that have a mask; mask == 1 pixels stay bit-exact."""
        rows = (self._chance("background", image.shape[0], g) & has_mask).nonzero()[:, 0]
        if len(rows) == 0:
            return image
        background = self.draw_backgrounds(image, mask, has_mask, rows, g)          # (R, 3, S, S)
        image = image.clone()
        image[rows] = torch.where(mask[rows, None], image[rows], background)
        return image

    def draw_backgrounds(self, image, mask, has_mask, rows, g):
        """(R, 3, S, S) backgrounds for ``rows``: bank images, or generated on the device by ``sources``."""
        n, size, dev = len(rows), image.shape[-1], self.device
        if self.bank is not None:  # a random bank image, mirrored half of the time
            pick = unit_float(self.bank[torch.randint(0, len(self.bank), (n,), generator=g, device=dev)])
            return torch.where(torch.rand(n, 1, 1, 1, generator=g, device=dev) < 0.5, pick.flip(-1), pick)
        weights = torch.tensor([self.opt["background"]["sources"][k] for k in BACKGROUND_KINDS], device=dev)
        kind = torch.multinomial(weights.expand(n, -1), 1, generator=g)[:, 0]       # (R,) per sample
        out = torch.empty(n, 3, size, size, device=dev)
        for k, make in enumerate((noise_texture, gradient_texture, clutter_texture, noise_texture)):
            sub = (kind == k).nonzero()[:, 0]
            if len(sub):
                out[sub] = make(len(sub), size, g, dev)
        sub = (kind == 3).nonzero()[:, 0]
        if len(sub):  # another sample's background; its own hand (all of it when unmasked) stays noise
            batch = image.shape[0]
            donor = (rows[sub] + torch.randint(1, max(batch, 2), (len(sub),), generator=g, device=dev)) % batch
            hidden = (mask[donor] | ~has_mask[donor, None, None])[:, None]
            out[sub] = torch.where(hidden, out[sub], image[donor])
        return out

    def occlude(self, image, mask, has_mask, uv, visible, g):
        """Cover a drawn fraction of each chosen hand with random shapes; returns (image, covered (B,))."""
        n, size, dev, opt = image.shape[0], image.shape[-1], self.device, self.opt["occlude"]
        covered = torch.zeros(n, device=dev)
        rows = self._chance("occlude", n, g).nonzero()[:, 0]
        hand = mask[rows]                                                             # (R, S, S)
        if uv is not None and not has_mask[rows].all():
            hand = torch.where(has_mask[rows, None, None], hand, joint_discs(uv[rows], visible[rows], size))
        keep = hand.flatten(1).any(1)
        rows, hand = rows[keep], hand[keep]
        if len(rows) == 0:
            return image, covered
        r, m_max = len(rows), opt["max_shapes"]
        target = _uniform(*opt["cover"], (r,), g, dev)
        spots = torch.multinomial(hand.flatten(1).float(), 2 * m_max, replacement=True, generator=g)
        spots_uv = torch.stack([spots % size, spots // size], -1).float()          # (R, 2M, 2) on the hand
        shapes, kinds, fractions = place_occluders(hand, target, spots_uv[:, :m_max], g)
        count = (fractions - target[:, None]).abs().argmin(1) + 1                      # shapes to draw
        x = image[rows]
        own = torch.rand(r, m_max, 1, generator=g, device=dev) < opt["hand_colour"]
        hand_colour = x.flatten(2).gather(2, spots[:, None, m_max:].expand(-1, 3, -1)).transpose(1, 2)
        hand_colour = hand_colour + _uniform(-0.04, 0.04, (r, m_max, 3), g, dev)
        colours = torch.where(own, hand_colour, torch.rand(r, m_max, 3, generator=g, device=dev)).clamp(0, 1)
        top = torch.full_like(hand, -1, dtype=torch.long)                             # (R, S, S) last shape
        for m, inside in enumerate(shapes):
            top = torch.where((m < count)[:, None, None] & inside, m, top)
        fill = colours.transpose(1, 2).gather(2, top.clamp(min=0).flatten(1)[:, None].expand(-1, 3, -1))
        fill = fill.view_as(x)                                                         # (R, 3, S, S)
        patch = (kinds.gather(1, top.clamp(min=0).flatten(1)) == 2).view_as(top)[:, None]
        fill = torch.where(patch, noise_texture(r, size, g, dev), fill)               # patches: a texture
        x = torch.where((top >= 0)[:, None], fill, x)
        covered[rows] = fractions.gather(1, (count - 1)[:, None])[:, 0]
        return image.index_put((rows,), x), covered

    def photometric(self, image, g):
        """Colour jitter, blur and noise, each on the samples drawn for it; labels unchanged."""
        n, dev, opt = image.shape[0], self.device, self.opt
        E = kornia.enhance
        rows = self._chance("color", n, g).nonzero()[:, 0]
        if len(rows):
            c, r = opt["color"], len(rows)
            x = E.adjust_brightness(image[rows], _uniform(-c["brightness"], c["brightness"], (r,), g, dev))
            x = E.adjust_contrast(x, _uniform(1 - c["contrast"], 1 + c["contrast"], (r,), g, dev))
            x = saturation_hue(x, _uniform(1 - c["saturation"], 1 + c["saturation"], (r,), g, dev),
                               _uniform(-c["hue"], c["hue"], (r,), g, dev) * 2 * math.pi)
            image = image.index_put((rows,), x.clamp(0, 1))
        rows = self._chance("blur", n, g).nonzero()[:, 0]
        if len(rows):
            lo, hi = opt["blur"]["sigma"]
            sigma = _uniform(lo, hi, (len(rows), 1), g, dev).expand(-1, 2).contiguous()
            kernel = 2 * math.ceil(3 * hi) + 1
            image = image.index_put((rows,), kornia.filters.gaussian_blur2d(image[rows], kernel, sigma))
        rows = self._chance("noise", n, g).nonzero()[:, 0]
        if len(rows):
            std = _uniform(*opt["noise"]["std"], (len(rows), 1, 1, 1), g, dev)
            noisy = image[rows] + std * torch.randn(image[rows].shape, generator=g, device=dev)
            image = image.index_put((rows,), noisy.clamp(0, 1))
        return image


# --- preview and benchmark ------------------------------------------------------------------------------

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


def forced_options(names, overrides=None):
    """Options with every named augmentation at p = 1 (preview and benchmark policy)."""
    options = resolve_options(overrides)
    for name in names:
        options[name]["p"] = 1.0
    return options


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


def bench_batch(n, size, device, seed=0):
    """A synthetic device batch: textured uint8 images, a disc-shaped hand mask, joints inside it."""
    g = torch.Generator(device=device).manual_seed(seed)
    image = (noise_texture(n, size, g, device) * 255).to(torch.uint8)
    u, v = _pixel_grid(size, device)
    mask = ((u - size / 2) ** 2 + (v - size / 2) ** 2 <= (0.3 * size) ** 2).expand(n, -1, -1)
    uv = size / 2 + (torch.rand(n, 21, 2, generator=g, device=device) - 0.5) * 0.4 * size
    K = torch.tensor([[2.0 * size, 0, size / 2], [0, 2.0 * size, size / 2], [0, 0, 1]], device=device)
    return {"image": image, "mask": mask.to(torch.uint8), "K": K.expand(n, 3, 3),
            "has_mask": torch.ones(n, dtype=torch.bool, device=device),
            "uvd": torch.cat([uv, torch.zeros(n, 21, 1, device=device)], -1)}


def run_bench(args):
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = bench_batch(args.batch_size, args.img_size, device)
    sync = synchronizer(device)
    print(f"augmentation cost on {device} ({torch.get_num_threads()} threads), batch {args.batch_size} x "
          f"{args.img_size} px, median of {args.iters} batches; named augmentations at p=1 unless noted")
    cases = [("none (uint8 -> float only)", (), None)] + [(name, (name,), None) for name in AUG_NAMES]
    cases += [(f"training default: {','.join(TRAIN_DEFAULT_AUGS)}", TRAIN_DEFAULT_AUGS, None),
              ("full set", AUG_NAMES, None), ("full set, default p", AUG_NAMES, resolve_options())]
    for label, names, options in cases:
        augmenter = Augmenter(names, options or forced_options(names), args.img_size, device, seed=0)
        seconds = median_seconds(lambda: augmenter(batch), args.iters, 1, sync)  # after one warm-up batch
        print(f"  {label:<30} {args.batch_size / seconds:9.1f} images/s")


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description="Preview or benchmark the batched augmentations.")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--preview", action="store_true", help="write preview.png and preview.npz to --out")
    mode.add_argument("--bench", action="store_true", help="print images/s per augmentation")
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
    parser.add_argument("--batch-size", type=int, default=32, help="benchmark batch size")
    parser.add_argument("--iters", type=int, default=5, help="benchmark batches per case")
    parser.add_argument("--threads", type=int, default=None, help="benchmark CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--out", default=None, help="preview output folder")
    locations.add_flags(parser, "synthetic")
    args = parser.parse_args(argv)
    locations.apply_flags(args, "synthetic")
    if args.preview and args.out is None:
        parser.error("--preview needs --out DIR")
    check_minimums(args, {"img_size": 1, "batch_size": 1, "iters": 1, "threads": 1})
    if args.preview:
        check_writable(args.out, "--out")
    run_preview(args) if args.preview else run_bench(args)


if __name__ == "__main__":
    main()
