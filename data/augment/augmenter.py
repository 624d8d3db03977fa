"""The ``Augmenter``: the named augmentations applied to a batch of device tensors in the pipeline's fixed order
(see the package docstring), labels moved with the pixels."""
import math

import kornia
import torch

from core import geometry
from core.common import UserError, unit_float
from core.geometry import warp_images
from data.augment.backgrounds import load_backgrounds
from data.augment.options import BACKGROUND_KINDS, parse_augs, resolve_options
from data.augment.shapes import clutter_texture, gradient_texture, joint_discs, noise_texture, place_occluders, uniform


def mirror_affine(flip, size):
    """(B, 2, 3): u -> size - 1 - u where ``flip`` (B,) bool, identity elsewhere (integer pixel centres)."""
    sign = 1.0 - 2.0 * flip.float()
    zero = torch.zeros_like(sign)
    row_u = torch.stack([sign, zero, (1.0 - sign) * (size - 1) / 2.0], -1)
    row_v = torch.stack([zero, zero + 1.0, zero], -1)
    return torch.stack([row_u, row_v], -2)


def saturation_hue(x, saturation, hue):
    """(R, 3, S, S): chroma scaled by ``saturation`` (R,) and turned by ``hue`` (R,) radians, as one 3x3
    matrix per sample in kornia's YUV space (a linear stand-in for kornia.enhance's HSV path, far cheaper)."""
    basis = torch.eye(3, device=x.device)[:, :, None, None]                  # three 1x1 pure-colour images
    to_yuv = kornia.color.rgb_to_yuv(basis)[..., 0, 0].T                     # (3, 3) kornia's constants
    c, s = torch.cos(hue) * saturation, torch.sin(hue) * saturation
    one, zero = torch.ones_like(c), torch.zeros_like(c)
    chroma = torch.stack([torch.stack(row, -1) for row in ((one, zero, zero), (zero, c, -s), (zero, s, c))], -2)
    matrix = torch.linalg.inv(to_yuv) @ chroma @ to_yuv                      # (R, 3, 3)
    return torch.einsum("rij,rjhw->rihw", matrix, x)


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
        angle = uniform(-opt["rotate"]["max_deg"], opt["rotate"]["max_deg"], (n,), g, dev)
        angle = torch.where(self._chance("rotate", n, g), angle, 0.0)
        scale = torch.where(self._chance("scale", n, g), uniform(*opt["scale"]["range"], (n,), g, dev), 1.0)
        reach = opt["translate"]["max_frac"] * size
        shift = torch.where(self._chance("translate", n, g)[:, None], uniform(-reach, reach, (n, 2), g, dev), 0.0)
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
        target = uniform(*opt["cover"], (r,), g, dev)
        spots = torch.multinomial(hand.flatten(1).float(), 2 * m_max, replacement=True, generator=g)
        spots_uv = torch.stack([spots % size, spots // size], -1).float()          # (R, 2M, 2) on the hand
        shapes, kinds, fractions = place_occluders(hand, target, spots_uv[:, :m_max], g)
        count = (fractions - target[:, None]).abs().argmin(1) + 1                      # shapes to draw
        x = image[rows]
        own = torch.rand(r, m_max, 1, generator=g, device=dev) < opt["hand_colour"]
        hand_colour = x.flatten(2).gather(2, spots[:, None, m_max:].expand(-1, 3, -1)).transpose(1, 2)
        hand_colour = hand_colour + uniform(-0.04, 0.04, (r, m_max, 3), g, dev)
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
            x = E.adjust_brightness(image[rows], uniform(-c["brightness"], c["brightness"], (r,), g, dev))
            x = E.adjust_contrast(x, uniform(1 - c["contrast"], 1 + c["contrast"], (r,), g, dev))
            x = saturation_hue(x, uniform(1 - c["saturation"], 1 + c["saturation"], (r,), g, dev),
                               uniform(-c["hue"], c["hue"], (r,), g, dev) * 2 * math.pi)
            image = image.index_put((rows,), x.clamp(0, 1))
        rows = self._chance("blur", n, g).nonzero()[:, 0]
        if len(rows):
            lo, hi = opt["blur"]["sigma"]
            sigma = uniform(lo, hi, (len(rows), 1), g, dev).expand(-1, 2).contiguous()
            kernel = 2 * math.ceil(3 * hi) + 1
            image = image.index_put((rows,), kornia.filters.gaussian_blur2d(image[rows], kernel, sigma))
        rows = self._chance("noise", n, g).nonzero()[:, 0]
        if len(rows):
            std = uniform(*opt["noise"]["std"], (len(rows), 1, 1, 1), g, dev)
            noisy = image[rows] + std * torch.randn(image[rows].shape, generator=g, device=dev)
            image = image.index_put((rows,), noisy.clamp(0, 1))
        return image
