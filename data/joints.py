"""Joint orders. Internally everything is FreiHAND order; other orders exist only at the I/O edge.

FreiHAND: 0 wrist; 1-4 thumb; 5-8 index; 9-12 middle; 13-16 ring; 17-20 pinky (each base to tip).
The MP21 course template (its JointInfo, used by FreiHANDDataset.convert_order) trains and writes in the order it
calls AIT: the root, then the five MCPs, the five PIPs, the five DIPs and the five tips, each thumb to pinky (the
thumb's chain, base to tip, plays MCP, PIP, DIP, tip).

``detect_order`` recognises the order of a file's joints from their geometry alone (the bones of a hand).
"""
import numpy as np
from scipy.optimize import nnls

from core.geometry import BONES, FINGERS, bone_length


# ORDERS[name][k] = the FreiHAND index of the k-th joint of that order.
ORDERS = {
    # The MP21 course template's order (the course scores slot against slot in it): root; MCPs, PIPs, DIPs, tips.
    "ait": np.array([0, *[FINGERS[f][level] for level in range(4)
                          for f in ("thumb", "index", "middle", "ring", "pinky")]]),
    # MANO's joint order: root; index, middle, pinky, ring, thumb; each MCP to tip.
    "mano": np.array([0, *FINGERS["index"], *FINGERS["middle"], *FINGERS["pinky"], *FINGERS["ring"],
                      *FINGERS["thumb"]]),
    "freihand": np.arange(21),
}

# Bone lengths (mm) of a typical adult right hand, in BONES' order: wrist -> thumb base, the thumb's three bones,
# wrist -> index MCP, the index's three bones, ... (the skeleton data/synthetic.py builds for a hand of size 1).
REFERENCE_BONES_MM = np.array([37.0, 38.0, 32.0, 28.0, 89.3, 40.0, 24.0, 21.0, 90.0, 44.0, 28.0, 23.0,
                               86.0, 41.0, 26.0, 22.0, 82.2, 33.0, 19.0, 19.0])
# An order is recognised when its bones fit the reference with a misfit (below) of at most ORDER_MISFIT_MAX and
# at most ORDER_MISFIT_RATIO times that of every other order: the limits sit between true hands with noise and
# other proportions, which fit below them, and points that form no hand, which fit above (the tests check both).
ORDER_MISFIT_MAX = 0.35
ORDER_MISFIT_RATIO = 0.5


def from_freihand(joints, order):
    """(..., 21, D) in FreiHAND order -> the same joints in ``order``."""
    return joints[..., ORDERS[order], :]


def to_freihand(joints, order):
    """(..., 21, D) in ``order`` -> FreiHAND order."""
    return joints[..., np.argsort(ORDERS[order]), :]


def bone_lengths(joints):
    """(..., 21, 3) in FreiHAND order -> (..., 20) lengths of the BONES."""
    return np.linalg.norm(joints[..., BONES[:, 1], :] - joints[..., BONES[:, 0], :], axis=-1)


def bone_ratios(xyz):
    """Each bone's length over SCALE_BONE's in hands (N, 21, 3): mean and sd (20,) over the hands, what the root
    depth expects of a hand (recorded in a checkpoint's stats as bone_ratio_mean and bone_ratio_sd)."""
    ratios = bone_lengths(xyz) / bone_length(xyz)[:, None]                          # (N, 20)
    return ratios.mean(0), ratios.std(0)


def order_misfits(joints):
    """{order: misfit} of hands (N, 21, 3) read in each order: how badly their bones fit REFERENCE_BONES_MM.

    Per order: the squared bone lengths, each hand's divided by its squared radius (RMS distance of its joints from
    their centroid, the same in every order), averaged over the hands -> (20,); fitted as signal * reference**2 +
    noise with both non-negative (independent noise of sd s per coordinate adds 6 s**2 to every squared bone);
    misfit = mean absolute residual / signal (inf without signal). Hands with all joints at one point are skipped.
    """
    joints = np.asarray(joints, np.float64)
    centred = joints - joints.mean(-2, keepdims=True)
    radius = np.sqrt((centred ** 2).sum(-1).mean(-1))                             # (N,)
    keep = np.isfinite(radius) & (radius > 0)
    reference = REFERENCE_BONES_MM ** 2
    design = np.stack([reference / reference.mean(), np.ones(len(reference))], 1)  # (20, 2)
    misfits = {}
    for order in ORDERS:
        relative = (bone_lengths(to_freihand(joints[keep], order)) / radius[keep, None]) ** 2
        if not len(relative):
            misfits[order] = np.inf
            continue
        squared = relative.mean(0)
        coef, _ = nnls(design, squared)                                            # (signal, noise)
        misfits[order] = float(np.abs(squared - design @ coef).mean() / coef[0]) if coef[0] > 0 else np.inf
    return misfits


def detect_order(joints):
    """(the order of ORDERS whose bones clearly fit a hand, or None, {order: misfit}) for hands (N, 21, 3) in any
    unit. None: no order fits clearly (not hands, or too few and too noisy to tell)."""
    misfits = order_misfits(joints)
    best, second = sorted(misfits, key=misfits.get)[:2]
    clear = misfits[best] <= ORDER_MISFIT_MAX and misfits[best] <= ORDER_MISFIT_RATIO * misfits[second]
    return (best if clear else None), misfits
