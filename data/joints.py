"""Joint orders. Internally everything is FreiHAND order; other orders exist only at the I/O edge.

FreiHAND: 0 wrist; 1-4 thumb; 5-8 index; 9-12 middle; 13-16 ring; 17-20 pinky (each base to tip).
"""
import numpy as np

NAMES = ["wrist",
         "thumb_mcp", "thumb_pip", "thumb_dip", "thumb_tip",
         "index_mcp", "index_pip", "index_dip", "index_tip",
         "middle_mcp", "middle_pip", "middle_dip", "middle_tip",
         "ring_mcp", "ring_pip", "ring_dip", "ring_tip",
         "pinky_mcp", "pinky_pip", "pinky_dip", "pinky_tip"]
FINGERS = {"thumb": [1, 2, 3, 4], "index": [5, 6, 7, 8], "middle": [9, 10, 11, 12],
           "ring": [13, 14, 15, 16], "pinky": [17, 18, 19, 20]}

# PARENTS[j]: the joint each bone of the kinematic tree starts from (the wrist has none).
PARENTS = np.array([-1, 0, 1, 2, 3, 0, 5, 6, 7, 0, 9, 10, 11, 0, 13, 14, 15, 0, 17, 18, 19])
BONES = np.array([(PARENTS[j], j) for j in range(1, 21)])  # (20, 2) parent -> child

# ORDERS[name][k] = the FreiHAND index of the k-th joint of that order.
ORDERS = {
    "freihand": np.arange(21),
    # MP21 course template (MANO): root; index, middle, pinky, ring, thumb; each MCP to tip.
    "mano": np.array([0, *FINGERS["index"], *FINGERS["middle"], *FINGERS["pinky"], *FINGERS["ring"],
                      *FINGERS["thumb"]]),
    # AIT: root, then the five MCPs, PIPs, DIPs and tips, each thumb to pinky.
    "ait": np.array([0, *[FINGERS[f][level] for level in range(4)
                          for f in ("thumb", "index", "middle", "ring", "pinky")]]),
}


def from_freihand(joints, order):
    """(..., 21, D) in FreiHAND order -> the same joints in ``order``."""
    return joints[..., ORDERS[order], :]


def to_freihand(joints, order):
    """(..., 21, D) in ``order`` -> FreiHAND order."""
    return joints[..., np.argsort(ORDERS[order]), :]
