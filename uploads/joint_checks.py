"""What every file's joints pass, written or read back: the unit, the joint order, plausible depths. A file kind
(``uploads.kinds.FileKind``) gives the unit and who reads the file."""
import numpy as np

from core.common import UserError
from data.joints import detect_order

TO_METRES = {"metres": 1.0, "millimetres": 0.001}
PLAUSIBLE_DEPTH_M = (0.05, 5.0)      # the wrist of a hand in front of a camera
PLAUSIBLE_SPREAD_M = (0.015, 0.2)    # a hand's RMS distance of its joints from their centroid
NOT_FREIHAND = "the predictions are not in FreiHAND order; nothing was written"


def joint_spread(xyz):
    """(N,) RMS distance of each hand's joints (N, 21, 3) from their centroid, in their unit."""
    centred = xyz - xyz.mean(1, keepdims=True)
    return np.sqrt((centred ** 2).sum(-1).mean(-1))


def looks_like_hands(xyz_m):
    """Whether the median wrist depth and joint spread of (N, 21, 3) metres fit hands in front of a camera. The
    wrist is slot 0 in every joint order."""
    depth, spread = np.median(xyz_m[:, 0, 2]), np.median(joint_spread(xyz_m))
    return bool(PLAUSIBLE_DEPTH_M[0] <= depth <= PLAUSIBLE_DEPTH_M[1]
                and PLAUSIBLE_SPREAD_M[0] <= spread <= PLAUSIBLE_SPREAD_M[1])


def check_unit(xyz, kind, what):
    """A UserError when joints (N, 21, 3) meant to be in ``kind.unit`` look like hands only in the other unit
    (depth and size both a factor 1000 off). Far-away or shapeless hands are left to ``depth_warning``."""
    unit = kind.unit
    other = "millimetres" if unit == "metres" else "metres"
    if looks_like_hands(xyz * TO_METRES[unit]) or not looks_like_hands(xyz * TO_METRES[other]):
        return
    raise UserError(f"{what}: the hands look like {other} (median wrist depth {np.median(xyz[:, 0, 2]):.4g}, median "
                    f"joint spread {np.median(joint_spread(xyz)):.4g}); {kind.reader} wants {unit}")


def depth_warning(xyz_m):
    """A line on wrist depths of (N, 21, 3) metres outside PLAUSIBLE_DEPTH_M, else None."""
    depth, (low, high) = xyz_m[:, 0, 2], PLAUSIBLE_DEPTH_M
    outside = (depth < low) | (depth > high)
    if not outside.any():
        return None
    extremes = []
    if depth.min() < low:
        extremes.append(f"down to {depth.min():.3g} m")
    if depth.max() > high:
        extremes.append(f"up to {depth.max():.3g} m")
    return (f"warning: wrist depths {' and '.join(extremes)} ({outside.sum()} of {len(depth)} outside {low:g}-{high:g} "
            f"m): implausible for a hand in front of a camera (an untrained model?); aligned scores ignore depth")


def check_joint_order(xyz, expected, what, hint):
    """The joint order ``detect_order`` finds in hands (N, 21, 3), as a phrase for an OK line; a UserError naming
    both orders when it finds another than ``expected``. ``hint``: the fix ({found} and {expected} are filled in)."""
    found, misfits = detect_order(xyz)
    if found is None:
        return "joint order not recognisable from the bones (no order fits a hand clearly)"
    if found != expected:
        raise UserError(f"{what}: the joints are in {found} order, not {expected} (their bones fit a hand with misfit "
                        f"{misfits[found]:.2f} read as {found}, {misfits[expected]:.2f} as {expected}); "
                        + hint.format(found=found, expected=expected))
    return f"joints in {found} order (recognised from the bones)"


def check_joints(xyz, kind, order, what, hint):
    """What --check and every writer check in a file's joints (N, 21, 3) of ``kind``, in its unit: the unit and the
    joint ``order`` (else a UserError, ``hint`` the fix of a wrong order). Returns the notes for the OK line: the
    order found and a depth warning, if any."""
    check_unit(xyz, kind, what)
    notes = [check_joint_order(xyz, order, what, hint), depth_warning(xyz * TO_METRES[kind.unit])]
    return [note for note in notes if note]
