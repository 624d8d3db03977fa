"""What a prediction file claims, checked before any work: the dataset it was made on (its recorded data root,
compared resolved), that its joints are hands in front of a camera in metres, and that a spread has one row per
prediction. Used wherever such a file is read: --pseudo-labels, ensemble.py's members, predict.py --check."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from core.common import UserError
from data.readers import detect_layout
from uploads.joint_checks import (
    PLAUSIBLE_DEPTH_M,
    PLAUSIBLE_SPREAD_M,
    check_unit,
    joint_spread,
)


def resolved(path):
    return Path(path).expanduser().resolve()


def check_made_on(record, path, data_root, what):
    """The file ``path`` (its ``record``) was made on the dataset at ``data_root``: its recorded data root, resolved,
    is that one. A recorded root that holds no dataset any more (a moved dataset) is not held against it."""
    recorded = record.get("data_root")
    if not recorded:
        raise UserError(f"{what} {path} records no data root, so nothing says which images its ids name; write it "
                        f"again with predict.py, which records it")
    if resolved(recorded) != resolved(data_root) and detect_layout(recorded) is not None:
        raise UserError(f"{what} {path} was made on the dataset in {resolved(recorded)}, not {resolved(data_root)}: "
                        f"its ids name other images; predict that split of {resolved(data_root)} with predict.py "
                        f"--data-root {resolved(data_root)}, or use the dataset it was made on")


def check_same_data_root(records, paths):
    """Every file that records a data root records the same one (resolved) as the first that does."""
    known = [(resolved(r["data_root"]), p) for r, p in zip(records, paths) if r.get("data_root")]
    for (root, path) in known[1:]:
        if root != known[0][0]:
            raise UserError(f"{known[0][1]} and {path} were made on different datasets ({known[0][0]} vs {root}); "
                            f"members must predict the same images: predict each on one dataset")


PREDICTION_FILE = SimpleNamespace(unit="metres", reader="a prediction file (predict.py writes metres)")


def check_metres(xyz, what):
    """Joints (N, 21, 3) meant in metres that look like hands only in millimetres are a UserError saying so."""
    check_unit(np.asarray(xyz, np.float64), PREDICTION_FILE, what)


def check_plausible_hands(xyz, ids, what):
    """Every hand of ``xyz`` (N, 21, 3), in metres, lies in front of the camera at a plausible depth and has a
    plausible size (PLAUSIBLE_DEPTH_M, PLAUSIBLE_SPREAD_M); joints in millimetres are named as such."""
    xyz = np.asarray(xyz, np.float64)
    check_metres(xyz, what)
    depth, spread = xyz[:, 0, 2], joint_spread(xyz)
    bad = ~((depth >= PLAUSIBLE_DEPTH_M[0]) & (depth <= PLAUSIBLE_DEPTH_M[1])
            & (spread >= PLAUSIBLE_SPREAD_M[0]) & (spread <= PLAUSIBLE_SPREAD_M[1]))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise UserError(f"{what}: {int(bad.sum())} of {len(xyz)} hands are not a hand in front of the camera (first: "
                        f"image id {int(ids[i])}, wrist depth {depth[i]:.3g} m, joint spread {spread[i] * 1000:.3g} "
                        f"mm; a hand lies {PLAUSIBLE_DEPTH_M[0]:g}-{PLAUSIBLE_DEPTH_M[1]:g} m away and spreads "
                        f"{PLAUSIBLE_SPREAD_M[0] * 1000:g}-{PLAUSIBLE_SPREAD_M[1] * 1000:g} mm); use the predictions "
                        f"of a trained model")


def check_spread(record, path):
    """A recorded ``spread_mm`` holds one finite, non-negative value per prediction."""
    if "spread_mm" not in record:
        return
    spread = np.asarray(record["spread_mm"])
    if spread.shape != (len(record["ids"]),) or not np.issubdtype(spread.dtype, np.number):
        raise UserError(f"{path}: spread_mm has shape {spread.shape}, expected ({len(record['ids'])},), one per "
                        f"prediction; write it again with ensemble.py")
    if not (np.isfinite(spread) & (spread >= 0)).all():
        raise UserError(f"{path}: spread_mm holds NaN, inf or negative values; write it again with ensemble.py")
