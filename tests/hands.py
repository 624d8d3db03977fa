"""Hands of the synthetic generator as a small network input sees them, for codec and root-depth tests."""
import numpy as np

from core import geometry
from data.synthetic import place_hand, sample_camera, sample_hand, sample_view


def synthetic_hands(n, seed=0, size=64):
    """(xyz (n, 21, 3) metres, K (n, 3, 3)) of the generator's hands, placed as its images place them."""
    rng = np.random.default_rng(seed)
    xyz, Ks = [], []
    for _ in range(n):
        joints, _palm, _radii = sample_hand(rng)
        relative = (joints - joints[geometry.ROOT_JOINT]) @ sample_view(rng).T
        K = sample_camera(rng, size)
        xyz.append(place_hand(relative, K, size, rng)[:21])
        Ks.append(K)
    return np.array(xyz), np.array(Ks)
