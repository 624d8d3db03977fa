"""The heatmap codec of both families, encode beside decode (as mmpose's codecs): Gaussian targets at a joint
and the soft-argmax that reads a joint back, for 1D per-axis heatmaps (Schneider 2020's lixels, SimCC) and 2D maps
(Liu 2022, Liu 2018 and He 2021). Bins tile the input: bin i of L spanning an S-pixel input is centred on input pixel
``geometry.heatmap_bin_centres`` (and depth bin i on ``geometry.depth_bin_centres`` over [-1, 1]), so a target
encoded at a point decodes back to that point (tests/test_heatmaps.py).
"""
import torch

from core.geometry import depth_bin_centres, heatmap_bin_centres


# --- 1D: per-axis heatmaps --------------------------------------------------------------------------------------

def gaussian_1d(coord, centres, variance):
    """Discretised Gaussian (B, J, L) over bins with centres (L,), at coord (B, J) in the centres' unit.

    A softmax of -(i - mu)^2 / (2 var), distances in bins, so it sums to one and never underflows to NaN.
    """
    bin_width = centres[1] - centres[0]
    distance = (centres - coord[..., None]) / bin_width
    return torch.softmax(-distance ** 2 / (2.0 * variance), -1)


def gaussian_1d_targets(uvd, num_bins, size, variance):
    """Per-axis Gaussian labels (B, J, 3, L) at uvd (B, J, 3): u, v over the bins spanning a size-pixel input,
    d over the depth bins spanning [-1, 1]; ``variance`` in bins."""
    pixels = heatmap_bin_centres(num_bins, size, device=uvd.device)
    depths = depth_bin_centres(num_bins, device=uvd.device)
    return torch.stack([gaussian_1d(uvd[..., 0], pixels, variance),
                        gaussian_1d(uvd[..., 1], pixels, variance),
                        gaussian_1d(uvd[..., 2], depths, variance)], 2)


def soft_argmax_1d(logits, size):
    """Per-axis heatmap logits (B, J, 3, L) -> uvd (B, J, 3) and probabilities (B, J, 3, L).

    u, v: expectation over the input-pixel centres of the L bins spanning a size-pixel input;
    d: expectation over the depth bin centres spanning [-1, 1].
    """
    num_bins = logits.shape[-1]
    probs = logits.softmax(-1)
    pixel_centres = heatmap_bin_centres(num_bins, size, device=logits.device)
    centres = torch.stack([pixel_centres, pixel_centres, depth_bin_centres(num_bins, device=logits.device)])
    uvd = (probs * centres.to(probs.dtype)).sum(-1)  # (B, J, 3)
    return uvd, probs


# --- 2D maps -------------------------------------------------------------------------------------------------

def gaussian_heatmaps(uv, size, height, width, sigma):
    """Targets (B, J, height, width): exp(-r^2 / 2 sigma^2), r in map pixels from uv (B, J, 2) input pixels.

    Map pixel centres sit at ``geometry.heatmap_bin_centres`` of a size-pixel input, so a joint on a pixel
    centre peaks (value 1) at that map pixel.
    """
    xs = heatmap_bin_centres(width, size, device=uv.device)   # (w,) input pixels
    ys = heatmap_bin_centres(height, size, device=uv.device)  # (h,)
    dx = (xs - uv[..., 0, None]) * (width / size)   # (B, J, w) map pixels
    dy = (ys - uv[..., 1, None]) * (height / size)  # (B, J, h)
    r2 = dy[..., :, None] ** 2 + dx[..., None, :] ** 2
    return torch.exp(-r2 / (2.0 * sigma ** 2))


def spatial_softmax(logits):
    """(B, J, h, w) scores -> (B, J, h, w) probabilities summing to 1 over each map."""
    b, j, h, w = logits.shape
    return logits.flatten(2).softmax(-1).view(b, j, h, w)


def soft_argmax_2d(prob, input_hw):
    """Expected pixel position (B, J, 2) = (u, v) under per-joint maps ``prob`` (B, J, h, w) summing to 1.

    Bin (row r, column c) of an h x w map covers input pixels around ``heatmap_bin_centres``, so a map
    peaked on one bin returns that bin's centre in input pixels of an input of size ``input_hw`` = (H, W).
    """
    h, w = prob.shape[-2:]
    u_centres = heatmap_bin_centres(w, input_hw[1], device=prob.device)  # (w,)
    v_centres = heatmap_bin_centres(h, input_hw[0], device=prob.device)  # (h,)
    u = (prob.sum(-2) * u_centres).sum(-1)  # column marginal (B, J, w) -> (B, J)
    v = (prob.sum(-1) * v_centres).sum(-1)  # row marginal (B, J, h) -> (B, J)
    return torch.stack([u, v], -1)
