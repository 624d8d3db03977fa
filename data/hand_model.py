"""The kinematic right hand of the synthetic set: anatomical limits and proportions, the pose sampler and the
forward kinematics (joints, palm outline and radii in the hand frame; see ``data.synthetic`` for the frame)."""
import numpy as np

# --- Anatomy: every sampled angle is clipped to these limits (degrees) --------------------------------------
# FLEX_LIMITS_DEG[finger, k] = (min, max) flexion before bone k of the chain starting at the finger's base.
# Fingers: MCP, PIP, DIP. Thumb: none at the CMC (its orientation is THUMB_CMC_*), then MCP and IP.
FLEX_LIMITS_DEG = np.array([[(0, 0), (-10, 60), (-15, 80)],      # thumb
                            [(-25, 90), (0, 110), (0, 80)],      # index
                            [(-25, 90), (0, 110), (0, 80)],      # middle
                            [(-25, 90), (0, 110), (0, 80)],      # ring
                            [(-25, 90), (0, 110), (0, 80)]],     # pinky
                           dtype=np.float64)
MCP_ABDUCT_DEG = (-15.0, 15.0)    # index..pinky, radial (+) or ulnar (-) of each finger's rest direction
FINGER_SPLAY_DEG = np.array([8.0, 0.0, -8.0, -17.0])   # rest directions of index..pinky in the palm plane
# Thumb CMC orientation (spread: radial angle of the metacarpal in the palm plane; palmar: its lift towards the
# palm side; roll: pronation about it, turning the thumb to face the fingers). Opposition blends rest -> opposed.
THUMB_CMC_LIMITS_DEG = np.array([(10.0, 70.0), (0.0, 65.0), (40.0, 120.0)])   # (min, max) of spread, palmar, roll
THUMB_REST_DEG = np.array([45.0, 10.0, 60.0])
THUMB_OPPOSED_DEG = np.array([20.0, 55.0, 110.0])

# Chain bases (hand frame, metres, for a hand of size 1): thumb CMC (joint 1), index..pinky MCPs.
CHAIN_BASE_M = np.array([[0.022, 0.028, 0.010], [0.024, 0.086, 0.000], [0.002, 0.090, 0.000],
                         [-0.018, 0.084, 0.003], [-0.035, 0.074, 0.007]])
# Bone lengths (metres) of each chain: thumb metacarpal, proximal, distal; fingers proximal, middle, distal.
CHAIN_BONE_M = np.array([[0.038, 0.032, 0.028], [0.040, 0.024, 0.021], [0.044, 0.028, 0.023],
                         [0.041, 0.026, 0.022], [0.033, 0.019, 0.019]])
# Flesh radius (metres) at each joint; a bone is a capsule tapering from its parent's radius to its child's.
JOINT_RADIUS_M = np.array([0.020, 0.015, 0.012, 0.010, 0.008, 0.011, 0.0095, 0.0085, 0.0072,
                           0.0115, 0.010, 0.0088, 0.0074, 0.011, 0.0092, 0.0082, 0.0070,
                           0.0095, 0.0082, 0.0072, 0.0062])
WRIST_STUB_M = 0.035              # length of the forearm stub drawn behind the wrist
HAND_SIZE = (0.85, 1.15)          # overall scale of a hand
PROPORTION_SD = 0.05              # per-finger and per-bone length jitter (relative)

# --- Kinematics ------------------------------------------------------------------------------------------------

def rotation(axis, degrees):
    """Right-handed rotation (3, 3) by ``degrees`` about coordinate axis 0 (x), 1 (y) or 2 (z)."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    rot = np.eye(3)
    rot[i, i], rot[j, j], rot[i, j], rot[j, i] = c, c, -s, s
    return rot


def _radial(degrees):
    """Rotation (3, 3) in the palm plane turning +y towards +x (the thumb side)."""
    return rotation(2, -degrees)


def forward_kinematics(bases, frames, lengths, flex_deg):
    """Chains -> joints (21, 3) in the hand frame, wrist at the origin.

    bases (5, 3): first joint of each chain (thumb CMC, index..pinky MCP); frames (5, 3, 3): each chain's base
    orientation (columns: flexion axis, bone direction, volar direction); lengths (5, 3); flex_deg (5, 3).
    """
    joints = np.zeros((21, 3))
    for finger in range(5):
        frame, point = frames[finger], bases[finger]
        joints[1 + 4 * finger] = point
        for k in range(3):
            frame = frame @ rotation(0, flex_deg[finger, k])
            point = point + frame[:, 1] * lengths[finger, k]
            joints[2 + 4 * finger + k] = point
    return joints


def sample_pose(rng):
    """Chain orientations (5, 3, 3) and flexions (5, 3) in degrees, all within the anatomical limits."""
    grip = rng.uniform()                                         # how closed the hand is overall
    curl = np.clip(grip + rng.normal(0.0, 0.3, 5), 0.0, 1.0)   # per finger, thumb..pinky
    flex = np.zeros((5, 3))
    flex[1:, 0] = -15.0 + 100.0 * curl[1:] + rng.normal(0.0, 10.0, 4)
    flex[1:, 1] = 110.0 * curl[1:] + rng.normal(0.0, 12.0, 4)
    flex[1:, 2] = 0.7 * flex[1:, 1] + rng.normal(0.0, 8.0, 4)   # DIP follows PIP
    flex[0, 1:] = [-5.0 + 60.0 * curl[0], -5.0 + 75.0 * curl[0]] + rng.normal(0.0, 8.0, 2)
    flex = np.clip(flex, FLEX_LIMITS_DEG[..., 0], FLEX_LIMITS_DEG[..., 1])

    abduct = rng.uniform(*MCP_ABDUCT_DEG, 4) * (1.0 - 0.7 * curl[1:])   # curled fingers spread less
    opposition = rng.uniform()
    cmc = THUMB_REST_DEG + opposition * (THUMB_OPPOSED_DEG - THUMB_REST_DEG) + rng.normal(0.0, 8.0, 3)
    spread, palmar, roll = np.clip(cmc, THUMB_CMC_LIMITS_DEG[:, 0], THUMB_CMC_LIMITS_DEG[:, 1])
    thumb = _radial(spread) @ rotation(0, palmar) @ rotation(1, -roll)   # roll turns volar towards ulnar
    frames = np.stack([thumb] + [_radial(s + a) for s, a in zip(FINGER_SPLAY_DEG, abduct)])
    return frames, flex


def sample_hand(rng):
    """A random right hand in the hand frame: joints (21, 3), palm outline (7, 3), radii (21,), metres."""
    size = rng.uniform(*HAND_SIZE)
    width = rng.uniform(0.9, 1.1)
    bases = (CHAIN_BASE_M * [width, 1.0, 1.0] + rng.normal(0.0, 0.002, (5, 3))) * size
    proportions = rng.normal(1.0, PROPORTION_SD, (5, 1)) * rng.normal(1.0, PROPORTION_SD, (5, 3))
    lengths = CHAIN_BONE_M * size * np.clip(proportions, 0.8, 1.2)
    frames, flex = sample_pose(rng)
    joints = forward_kinematics(bases, frames, lengths, flex)
    wrist_sides = np.array([[0.026, 0.006, 0.0], [-0.026, 0.006, 0.0]]) * width * size
    palm = np.stack([wrist_sides[0], *joints[[1, 5, 9, 13, 17]], wrist_sides[1]])
    radii = JOINT_RADIUS_M * size * rng.uniform(0.85, 1.15)
    return joints, palm, radii
