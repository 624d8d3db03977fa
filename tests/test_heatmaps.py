"""The heatmap codec: a target encoded at a point decodes back to that point, in 1D and in 2D, at any map size."""
import pytest
import torch

from models.heatmaps import gaussian_1d_targets, gaussian_heatmaps, soft_argmax_1d, soft_argmax_2d, spatial_softmax


@pytest.mark.parametrize("size, bins", [(64, 32), (224, 112), (64, 64)])
def test_1d_targets_decode_to_their_point(size, bins):
    """Labels at uvd (pixels off the bin centres, depths in [-0.8, 0.8]) read back through soft-argmax of their
    logs: the same uvd within a twentieth of a bin (the Gaussian is cut at the ends of the axis)."""
    generator = torch.Generator().manual_seed(0)
    uv = size * (0.2 + 0.6 * torch.rand(4, 21, 2, generator=generator))
    d = 1.6 * torch.rand(4, 21, 1, generator=generator) - 0.8
    uvd = torch.cat([uv, d], -1)
    labels = gaussian_1d_targets(uvd, bins, size, variance=2.0)                   # (B, J, 3, L), sums to 1
    torch.testing.assert_close(labels.sum(-1), torch.ones(4, 21, 3))
    decoded, probs = soft_argmax_1d(labels.log(), size)
    torch.testing.assert_close(probs, labels)
    pixel, depth_bin = size / bins, 2.0 / bins
    assert (decoded[..., :2] - uv).abs().max() < 0.05 * pixel    # the Gaussian is cut at the axis ends
    assert (decoded[..., 2:] - d).abs().max() < 0.05 * depth_bin


@pytest.mark.parametrize("size, side", [(64, 16), (128, 64), (64, 32)])
def test_2d_targets_decode_to_their_point(size, side):
    """A Gaussian map at uv, as a distribution (normalised by its sum), reads back at uv through soft-argmax;
    the spatial softmax of its logs is the same distribution."""
    generator = torch.Generator().manual_seed(1)
    uv = size * (0.25 + 0.5 * torch.rand(3, 21, 2, generator=generator))
    maps = gaussian_heatmaps(uv, size, side, side, sigma=1.5)                     # (B, J, h, w), peak 1
    assert maps.amax((-2, -1)).min() > 0.75
    prob = maps / maps.sum((-2, -1), keepdim=True)
    torch.testing.assert_close(spatial_softmax(maps.log()), prob)
    assert (soft_argmax_2d(prob, (size, size)) - uv).abs().max() < 0.03 * size / side  # cut at the map edges


def test_a_joint_on_a_bin_centre_peaks_on_that_bin_and_decodes_exactly():
    size, side = 64, 16
    centre = (torch.arange(side) + 0.5) * (size / side) - 0.5                    # input pixel of each bin centre
    uv = torch.stack([centre[5], centre[9]]).view(1, 1, 2)
    maps = gaussian_heatmaps(uv, size, side, side, sigma=1.0)[0, 0]
    assert maps[9, 5] == 1.0 and maps.argmax() == 9 * side + 5
    prob = (maps / maps.sum())[None, None]
    torch.testing.assert_close(soft_argmax_2d(prob, (size, size))[0, 0], uv[0, 0], atol=1e-4, rtol=0)
