"""Scoring a prediction against its labels: both Procrustes variants, each with the constant shape's PA-MPJPE
(``constant_shape_mm``) and the prediction's fraction of it (``fraction_of_constant_shape``), the printed table
and PREFIX.metrics.json. Used by predict.py and ensemble.py."""
import json
from pathlib import Path

import numpy as np

from core.common import UserError, atomic_write
from core.json_files import json_text
from core.messages import logger
from scoring import metrics

log = logger(__name__)

METRIC_COLUMNS = {"pa_mpjpe_mm": "PA-MPJPE mm", "auc_0_50mm": "AUC 0-50mm", "f@5mm": "F@5mm",
                  "f@15mm": "F@15mm", "mpjpe_mm": "root-rel. MPJPE mm",
                  "fraction_of_constant_shape": "of constant shape", "camera_mpjpe_mm": "camera MPJPE mm",
                  metrics.ROOT_OFF_KEY: f"root >{metrics.ROOT_OFF_MM / 10:g}cm"}
VARIANTS = {"reflections_allowed": "reflections allowed (FreiHAND)",
            "reflections_corrected": "reflections corrected (MP21)"}
# The constant shape's keys as earlier versions wrote them in metrics.json (and tools in their tables).
OLD_KEYS = {"constant_shape_pa_mpjpe_mm": "constant_shape_mm", "of_constant_shape": "fraction_of_constant_shape"}


def rows_of(available_ids, ids):
    """Row indices (N,) of image ``ids`` within ``available_ids``, and the ids not found there."""
    rows = {image_id: row for row, image_id in enumerate(available_ids)}
    missing = [i for i in ids if i not in rows]
    return np.array([rows[i] for i in ids if i in rows], dtype=np.int64), missing


def labels_for(split, ids, what):
    """Ground truth xyz (N, 21, 3) of the images ``ids`` of a labelled split."""
    rows, missing = rows_of(split.image_ids, ids)
    if missing:
        raise UserError(f"{what}: image id {missing[0]} is not in the {split.name} split of {split.root} "
                        f"({len(missing)} ids missing); pass the --data-root the predictions were made on")
    return split.xyz[rows]


def score(xyz, gt, constant_shape_m=None):
    """Metrics of predictions against ground truth (N, 21, 3) metres for both Procrustes variants; given the
    training set's constant shape (21, 3) metres, each variant also holds the constant shape's PA-MPJPE (mm)
    under that variant and the prediction's fraction of it."""
    result = {}
    for variant in VARIANTS:
        reflections = variant == "reflections_allowed"
        result[variant] = metrics.evaluate(xyz, gt, allow_reflection=reflections)
        if constant_shape_m is not None:
            constant = metrics.constant_shape_mm(constant_shape_m, gt, allow_reflection=reflections)
            result[variant]["constant_shape_mm"] = constant
            result[variant]["fraction_of_constant_shape"] = result[variant]["pa_mpjpe_mm"] / constant
    return result


def score_table(scores):
    """The metrics as a text table, one row per variant (with its fraction of the constant shape) and one for the
    constant shape."""
    import pandas as pd
    rows = {label: {column: scores[variant].get(key) for key, column in METRIC_COLUMNS.items()}
            for variant, label in VARIANTS.items()}
    if "constant_shape_mm" in scores["reflections_allowed"]:
        rows["constant-shape baseline"] = {
            "PA-MPJPE mm": scores["reflections_allowed"]["constant_shape_mm"], "of constant shape": 1.0}
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=list(METRIC_COLUMNS.values()))
    return frame.to_string(float_format=lambda v: f"{v:.3f}", na_rep="-")


def report_scores(prefix, xyz, gt, constant_shape_m=None, info=None):
    """Print the score table and write PREFIX.metrics.json (``info``: what made the predictions). Returns it."""
    scores = {**(info or {}), "n": int(len(gt)), **score(xyz, gt, constant_shape_m)}
    log.info(f"scores on {scores['n']} labelled images:\n{score_table(scores)}")
    path = Path(f"{prefix}.metrics.json")
    with atomic_write(path) as tmp:
        tmp.write_text(json_text(scores, indent=2))
    return path


def current_keys(scores):
    """A dict read from a metrics.json (or a table row), nested dicts included, with the constant shape's keys as
    this version writes them: files of earlier versions stay readable."""
    if not isinstance(scores, dict):
        return scores
    return {OLD_KEYS.get(key, key): current_keys(value) for key, value in scores.items()}


def read_scores(path):
    """PREFIX.metrics.json as a dict, written by this version or an earlier one (``current_keys``)."""
    return current_keys(json.loads(Path(path).read_text()))
