"""One loss for every architecture: ``pose_loss(uvd, aux, target, weights, progress)``.

``weights`` maps term names to weights (a term with weight 0 or absent is skipped) and may also set OPTIONS.
Each term is a small function below with its formula; ``parts`` holds every computed term *unweighted*
(detached, for logging), ``total`` the weighted sum.

Visibility policy: u, v errors count only for joints inside the input (``target['visible']``); d and every
3D term count all joints (the depth label and the camera-space joint exist wherever the joint is).

Terms
-----
* on normalised uvd (``geometry.normalize_uvd``: u, v in [-1, 1] across the input, d unchanged):
  ``coord_mse``, ``coord_l1`` (Schneider 2020, Reichardt 2021): mean over the counted coordinates;
  ``uv_l1``, ``depth_l1`` (Liu 2022): the mean L1 of the 2D part and of the depth.
* on heatmaps: ``heatmap2d`` (Liu 2018, He 2021): mean squared error to Gaussians (peak 1, ``heatmap_sigma`` map
  pixels) at the target uv, visible joints, summed over the maps in ``aux['heatmaps2d']`` (intermediate
  supervision); ``js1d`` (Schneider 2020's regulariser): Jensen-Shannon divergence (nats) of each 1D heatmap in
  ``aux['heatmaps1d']`` from a discretised Gaussian of variance ``js_variance`` bins at the target bin;
  ``simcc_kl`` (SimCC / RTMPose's KLDiscretLoss): KL(target || softmax(logits / ``kl_tau``)) of the 1D logits
  ``aux['logits1d']``, the target a discretised Gaussian of sd ``kl_sigma`` bins at the target coordinate.
* He 2021's family on root-relative camera-space joints, ``geometry.uvd_to_xyz`` with the target's K and root
  depth, in units of DEPTH_RANGE_M (0.15 m), so a hand spans about 1 and the terms are of order 1;
  per sample sums over joints / bones, averaged over the batch:
  ``pose_l2`` = sum_j |p_j - t_j|^2; ``bone_length`` = sum_b | |b_pred| - |b_true| |;
  ``bone_direction`` = sum_b |b_pred/|b_pred| - b_true/|b_true||; ``bone_cosine`` = 1 - mean_b cos(b_pred, b_true);
  ``asm`` = sum over the 63 values of (Y_pred - Y_asm)^2, Y_asm the batch's ground truth projected on its own
  top-k principal components with coefficients clamped to +-3 sqrt(eigenvalue); its weight decays with
  ``progress`` (``asm_decay``: 'linear' 1 - p, or 'cosine' (1 + cos(pi p)) / 2), from weight to 0.
* on the lifting network (ours, archs with the lifting depth head): ``tilted_views``, ``depth_l1`` of the
  depths it reads from the 2D pose alone of each hand turned out of the image plane (``views`` turns a hand, of
  sd ``view_tilt_deg`` about random in-image axes through the root, ``models.heads.tilted_views``).
"""
import math
from functools import cached_property

import torch
import torch.nn.functional as F

from core.common import UserError
from core.geometry import BONES
from core.geometry import DEPTH_RANGE_M, ROOT_JOINT, normalize_uvd, uvd_to_xyz
from models.heads import tilted_views
from models.heatmaps import gaussian_1d_targets, gaussian_heatmaps

OPTIONS = {
    "heatmap_sigma": 2.0,    # heatmap2d: Gaussian sigma in heatmap pixels
    "js_variance": 2.0,      # js1d: target variance in bins
    "kl_sigma": 2.0,         # simcc_kl: target Gaussian sigma in bins
    "kl_tau": 1.0,           # simcc_kl: temperature of the predicted softmax (RTMPose: 0.1)
    "asm_components": 10,    # asm: principal components kept (at most batch size - 1)
    "asm_decay": "linear",   # asm: 'linear' or 'cosine' decay of its weight over training
    "views": 4,              # tilted_views: other views of each hand a step
    "view_tilt_deg": 25.0,   # tilted_views: sd of the turn of each view, degrees
}
ASM_DECAYS = {"linear": lambda p: 1.0 - p, "cosine": lambda p: 0.5 * (1.0 + math.cos(math.pi * p))}
EPS = 1e-8


# --- terms on normalised uvd -------------------------------------------------------------------------------

def masked_mean(values, mask):
    """Mean of ``values`` where ``mask`` (same shape) is set, weighted by it: 0/1, or the samples' loss weights
    (pseudo-labels) times 0/1."""
    return (values * mask).sum() / mask.sum().clamp(min=EPS)


def batch_mean(per_sample, weight=None):
    """Mean over the batch of per-sample values (B,), weighted by the samples' loss weights (B,) when given."""
    if weight is None:
        return per_sample.mean()
    return (per_sample * weight).sum() / weight.sum().clamp(min=EPS)


def coord_mse(pred, true, mask):
    """pred, true: (B, 21, 3) normalised uvd; mask (B, 21, 3): which coordinates count."""
    return masked_mean((pred - true) ** 2, mask)


def coord_l1(pred, true, mask):
    return masked_mean((pred - true).abs(), mask)


def uv_l1(pred, true, mask):
    return masked_mean((pred[..., :2] - true[..., :2]).abs(), mask[..., :2])


def depth_l1(pred, true, weight=None):
    return batch_mean((pred[..., 2] - true[..., 2]).abs().mean(-1), weight)


def tilted_view_depth_l1(lifting, target, views, tilt_sd_deg, weight=None):
    """``depth_l1`` of the lifting network on each hand seen from ``views`` other directions (``tilted_views``),
    read from the 2D pose alone: the network learns depth from the foreshortening of many more poses than the
    training images show (it otherwise learns their depths by heart, docs/recipes.md)."""
    uvd = target["uvd"].float()
    turned = tilted_views(uvd, target["K"].to(uvd.dtype), target["root_depth"].to(uvd.dtype), views, tilt_sd_deg)
    weight = None if weight is None else weight.repeat_interleave(views)
    return batch_mean((lifting.depth_without_image(turned[..., :2]).float() - turned[..., 2:]).abs().mean((-2, -1)),
                      weight)


# --- terms on heatmaps -------------------------------------------------------------------------------------

def heatmap2d(heatmaps, uv, visible, size, sigma):
    """Sum over the maps (B, J, h, w) of the mean squared error to Gaussian targets, over visible joints."""
    total = uv.new_zeros(())
    for maps in heatmaps:
        target = gaussian_heatmaps(uv, size, maps.shape[-2], maps.shape[-1], sigma)
        per_joint = ((maps - target) ** 2).mean((-2, -1))  # (B, J)
        total = total + masked_mean(per_joint, visible)
    return total


def jensen_shannon(p, q):
    """JS divergence (nats) along the last axis: (KL(p | m) + KL(q | m)) / 2, m = (p + q) / 2."""
    m = 0.5 * (p + q)
    kl_pm = (torch.special.xlogy(p, p) - torch.special.xlogy(p, m)).sum(-1)
    kl_qm = (torch.special.xlogy(q, q) - torch.special.xlogy(q, m)).sum(-1)
    return 0.5 * (kl_pm + kl_qm)


def js1d(probs, uvd, mask, size, variance):
    """Mean JS divergence of the 1D heatmaps ``probs`` (B, J, 3, L) from Gaussians at the target uvd (B, J, 3)."""
    targets = gaussian_1d_targets(uvd, probs.shape[-1], size, variance)
    return masked_mean(jensen_shannon(probs, targets), mask)


def simcc_kl(logits, uvd, mask, size, sigma, tau):
    """Mean KL divergence (nats) from Gaussian labels at the target uvd (B, J, 3) to softmax(logits / tau) of
    the 1D logits (B, J, 3, L)."""
    targets = gaussian_1d_targets(uvd, logits.shape[-1], size, sigma ** 2)
    log_probs = torch.log_softmax(logits / tau, -1)
    kl = (torch.special.xlogy(targets, targets) - targets * log_probs).sum(-1)  # (B, J, 3)
    return masked_mean(kl, mask)


# --- He 2021's family on root-relative camera-space joints (units of DEPTH_RANGE_M) -----------------------

def bone_vectors(joints):
    """(B, 21, 3) -> (B, 20, 3), parent -> child."""
    return joints[:, BONES[:, 1]] - joints[:, BONES[:, 0]]


def pose_l2(pred, true, weight=None):
    return batch_mean(((pred - true) ** 2).sum((-2, -1)), weight)


def bone_length(pred, true, weight=None):
    return batch_mean((bone_vectors(pred).norm(dim=-1) - bone_vectors(true).norm(dim=-1)).abs().sum(-1), weight)


def bone_direction(pred, true, weight=None):
    pred_dir = F.normalize(bone_vectors(pred), dim=-1, eps=EPS)
    true_dir = F.normalize(bone_vectors(true), dim=-1, eps=EPS)
    return batch_mean((pred_dir - true_dir).norm(dim=-1).sum(-1), weight)


def bone_cosine(pred, true, weight=None):
    """1 - mean cos_sim; cos_sim = x.y / max(|x| |y|, 1e-8)."""
    cosine = F.cosine_similarity(bone_vectors(pred), bone_vectors(true), dim=-1, eps=EPS)   # (B, 20)
    return 1.0 - batch_mean(cosine.mean(-1), weight)


def asm_target(true, num_components):
    """The active-shape-model version of a batch (B, 21, 3): projected on its top-k principal components, with
    each coefficient clamped to +-3 sqrt(eigenvalue). k is capped at B - 1."""
    flat = true.reshape(true.shape[0], -1)  # (B, 63)
    mean = flat.mean(0, keepdim=True)
    centred = flat - mean
    k = min(num_components, flat.shape[0] - 1)
    _, singular, vh = torch.linalg.svd(centred, full_matrices=False)
    components = vh[:k].T                                        # (63, k)
    eigenvalues = singular[:k] ** 2 / max(flat.shape[0] - 1, 1)  # covariance eigenvalues
    limit = 3.0 * eigenvalues.sqrt()
    coefficients = torch.clamp(centred @ components, -limit, limit)  # (B, k)
    return (mean + coefficients @ components.T).reshape(true.shape)


def asm(pred, true, num_components, weight=None):
    return batch_mean(((pred - asm_target(true.detach(), num_components)) ** 2).sum((-2, -1)), weight)


# --- the combined loss -------------------------------------------------------------------------------------

class _Batch:
    """The prediction and target in every space the terms need, each computed once, on demand."""

    def __init__(self, uvd, aux, target, options, lifting=None):
        self.uvd, self.aux, self.target, self.options, self._lifting = uvd, aux, target, options, lifting
        self.size = target["size"]

    def lifting(self, term):
        if self._lifting is None:
            raise UserError(f"loss term {term!r} needs a lifting network (an arch with the lifting depth head); "
                            f"set its weight to 0")
        return self._lifting

    @cached_property
    def weight(self):
        """(B,) the samples' loss weights (pseudo-labels), or None: all 1."""
        weight = self.target.get("weight")
        return None if weight is None else weight.to(self.uvd.dtype)

    @cached_property
    def mask(self):
        """(B, 21, 3): u, v of visible joints, d of all joints, times the sample's loss weight."""
        visible = self.target["visible"].to(self.uvd.dtype)
        mask = torch.stack([visible, visible, torch.ones_like(visible)], -1)
        return mask if self.weight is None else mask * self.weight[:, None, None]

    @cached_property
    def pred_norm(self):
        return normalize_uvd(self.uvd, self.size)

    @cached_property
    def true_norm(self):
        return normalize_uvd(self.target["uvd"], self.size)

    def _relative_xyz(self, uvd):
        xyz = uvd_to_xyz(uvd, self.target["K"].to(uvd.dtype), self.target["root_depth"].to(uvd.dtype))
        return (xyz - xyz[:, ROOT_JOINT:ROOT_JOINT + 1]) / DEPTH_RANGE_M

    @cached_property
    def pred_xyz(self):
        return self._relative_xyz(self.uvd)

    @cached_property
    def true_xyz(self):
        return self._relative_xyz(self.target["uvd"])

    def aux_output(self, key, term):
        if key not in self.aux:
            raise UserError(f"loss term {term!r} needs the model's aux[{key!r}], which this arch does not return; "
                            f"set its weight to 0")
        return self.aux[key]


TERMS = {
    "coord_mse": lambda b: coord_mse(b.pred_norm, b.true_norm, b.mask),
    "coord_l1": lambda b: coord_l1(b.pred_norm, b.true_norm, b.mask),
    "uv_l1": lambda b: uv_l1(b.pred_norm, b.true_norm, b.mask),
    "depth_l1": lambda b: depth_l1(b.pred_norm, b.true_norm, b.weight),
    "heatmap2d": lambda b: heatmap2d(b.aux_output("heatmaps2d", "heatmap2d"), b.target["uvd"][..., :2],
                                     b.mask[..., 0], b.size, b.options["heatmap_sigma"]),
    "js1d": lambda b: js1d(b.aux_output("heatmaps1d", "js1d"), b.target["uvd"], b.mask, b.size,
                           b.options["js_variance"]),
    "simcc_kl": lambda b: simcc_kl(b.aux_output("logits1d", "simcc_kl"), b.target["uvd"], b.mask, b.size,
                                   b.options["kl_sigma"], b.options["kl_tau"]),
    "pose_l2": lambda b: pose_l2(b.pred_xyz, b.true_xyz, b.weight),
    "bone_length": lambda b: bone_length(b.pred_xyz, b.true_xyz, b.weight),
    "bone_direction": lambda b: bone_direction(b.pred_xyz, b.true_xyz, b.weight),
    "bone_cosine": lambda b: bone_cosine(b.pred_xyz, b.true_xyz, b.weight),
    "asm": lambda b: asm(b.pred_xyz, b.true_xyz, b.options["asm_components"], b.weight),
    "tilted_views": lambda b: tilted_view_depth_l1(b.lifting("tilted_views"), b.target, b.options["views"],
                                                   b.options["view_tilt_deg"], b.weight),
}
AUX_TERMS = {"heatmap2d", "js1d", "simcc_kl"}
LOSS_TERMS = frozenset(TERMS) | frozenset(OPTIONS)  # every key a weights dict may hold: term names and options


def is_number(value):
    """A finite int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def split_weights(weights):
    """``weights`` -> (term weights, options with defaults); an unknown key or bad option is a UserError."""
    unknown = set(weights) - LOSS_TERMS
    if unknown:
        raise UserError(f"unknown loss keys {sorted(unknown)}; terms: {', '.join(TERMS)}; "
                        f"options: {', '.join(OPTIONS)}")
    options = {**OPTIONS, **{k: v for k, v in weights.items() if k in OPTIONS}}
    for key in ("heatmap_sigma", "js_variance", "kl_sigma", "kl_tau"):
        if not (is_number(options[key]) and options[key] > 0):
            raise UserError(f"loss option {key}={options[key]!r}: must be a positive number")
    for key in ("asm_components", "views"):
        if not (isinstance(options[key], int) and not isinstance(options[key], bool) and options[key] >= 1):
            raise UserError(f"loss option {key}={options[key]!r}: must be an integer >= 1")
    if not (is_number(options["view_tilt_deg"]) and options["view_tilt_deg"] >= 0):
        raise UserError(f"loss option view_tilt_deg={options['view_tilt_deg']!r}: must be a number of degrees >= 0")
    for key in TERMS:
        if key in weights and not (is_number(weights[key]) and weights[key] >= 0):
            raise UserError(f"loss weight {key}={weights[key]!r}: must be a finite number >= 0 (0 turns the term "
                            f"off)")
    if options["asm_decay"] not in ASM_DECAYS:
        raise UserError(f"loss option asm_decay={options['asm_decay']!r}; choose {' or '.join(ASM_DECAYS)}")
    terms = {k: float(v) for k, v in weights.items() if k in TERMS and v}
    if not terms:
        raise UserError(f"no loss term has a nonzero weight in {weights}; terms: {', '.join(TERMS)}")
    return terms, options


def term_weight(name, weight, options, progress):
    """The weight of a term at this point of training (only ``asm`` changes)."""
    if name == "asm":
        return weight * ASM_DECAYS[options["asm_decay"]](min(max(progress, 0.0), 1.0))
    return weight


def loss_target(batch, size):
    """The loss's view of an augmented batch (``data.augment.Augmenter``'s output) at input size ``size``."""
    target = {"uvd": batch["uvd"], "visible": batch["visible"], "K": batch["K"],
              "root_depth": batch["xyz"][:, ROOT_JOINT, 2], "size": size}
    if "weight" in batch:  # pseudo-labelled samples weigh pseudo_weight, the labelled 1
        target["weight"] = batch["weight"]
    return target


def pose_loss(uvd, aux, target, weights, progress=0.0, lifting=None):
    """Weighted sum of the loss terms.

    uvd: prediction (B, 21, 3) in model space; aux: the model's aux dict ({} when it has none);
    target: 'uvd' (B, 21, 3) model space of the input, 'visible' (B, 21) joints inside the input,
    'K' (B, 3, 3) camera matrix of the input, 'root_depth' (B,) metres, 'size' (int) input side in pixels,
    optionally 'weight' (B,): each sample's loss weight (every term is then a weighted mean);
    weights: term -> weight, plus OPTIONS; progress: fraction of training done, in [0, 1]; lifting: the model's
    ``models.heads.LiftingHead`` (for ``tilted_views``), if it has one.
    Returns (total, parts): the scalar to minimise, and term -> unweighted detached value.
    """
    terms, options = split_weights(weights)
    batch = _Batch(uvd, aux, target, options, lifting)
    total = uvd.new_zeros(())
    parts = {}
    for name, weight in terms.items():
        value = TERMS[name](batch)
        total = total + term_weight(name, weight, options, progress) * value
        parts[name] = value.detach()
    return total, parts
