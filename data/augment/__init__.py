"""Batched augmentation on the training device, with labels that stay on the pixels (``augment.py --preview``
shows it; bench.py times it).

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
  ``flipped`` (B,) says which samples show a left hand. Not in the default set:
  Schneider 2020 and Reichardt 2021 both dropped it.
* Occlusion: the target fraction of the hand area (the mask; discs around the visible joints when the
  sample has no mask) is drawn from ``cover``; shapes are added until the covered fraction is closest to it.
* Only named augmentations run (train's --augs; TRAIN_DEFAULT_AUGS = rotate, as Schneider 2020); once named, p
  is the chance per sample. Preview: every named augmentation runs with p = 1, so each image shows it.
* Output ``image`` is always float32 in [0, 1], whatever ran, so downstream code has one path.
"""
from data.augment.augmenter import Augmenter
from data.augment.backgrounds import IMAGE_SUFFIXES, load_backgrounds
from data.augment.options import (AUG_DEFAULTS, AUG_NAMES, BACKGROUND_KINDS, TRAIN_DEFAULT_AUGS, forced_options,
                                  parse_augs, resolve_options)
from data.augment.shapes import ellipse_masks, polygon_masks

__all__ = ["AUG_DEFAULTS", "AUG_NAMES", "Augmenter", "BACKGROUND_KINDS", "IMAGE_SUFFIXES", "TRAIN_DEFAULT_AUGS",
           "ellipse_masks", "forced_options", "load_backgrounds", "parse_augs", "polygon_masks", "resolve_options"]
