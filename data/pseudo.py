"""Pseudo-labels (train.py --pseudo-labels PRED.npz): the images of a predicted split trained on with the
predicted joints as their labels.

The split is read without its labels (``load_split(..., labels=False)``: its *_xyz.json is never opened), and
the predictions become its labels. ``pseudo_keep`` < 1 keeps the share of images whose prediction is surest:
those on which an ensemble's members agree best (``spread_mm``, written by ensemble.py: the RMS distance of the
members' root-relative joints from the blend's, ``prediction.ensembling.member_spread_mm``), since members that
differ in seed and architecture rarely make the same mistake. ``WeightedUnion`` joins them to the training set,
each sample carrying its loss weight.
"""
from dataclasses import replace

import numpy as np
import torch
from torch.utils.data import default_collate

from core.common import UserError, file_sha256
from data.readers import detect_layout, load_split

LABELLED_SPLITS = ("train", "val")   # never pseudo-labelled: their labels train and validate


def confident_rows(record, keep, path):
    """Rows of ``record`` to keep: all, or the ``keep`` share with the smallest ``spread_mm``."""
    if keep >= 1.0:
        return np.arange(len(record["ids"]))
    if "spread_mm" not in record:
        raise UserError(f"pseudo_keep={keep}: {path} records no agreement to rank its predictions by; pass an "
                        f"ensemble.py file (its members' spread_mm) or set pseudo_keep=1")
    count = max(1, int(round(keep * len(record["ids"]))))
    return np.sort(np.argsort(record["spread_mm"], kind="stable")[:count])


def pseudo_split(record, path, data_root, keep=1.0):
    """(the predicted split, labelled by ``record``'s joints, info for the run's config): ``record`` is a
    prediction file's dict (uploads.records.load_predictions) of a split of the dataset at ``data_root``."""
    name = str(record.get("split", ""))
    if name in LABELLED_SPLITS or not name:
        raise UserError(f"--pseudo-labels {path}: predicts the {name or 'unnamed'} split; pseudo-labels come from "
                        f"the split to label (FreiHAND evaluation, MP21 test), never from the training data")
    if detect_layout(data_root) is None:
        raise UserError(f"--pseudo-labels {path}: no dataset at {data_root}")
    split = load_split(data_root, name, labels=False)
    rows = {int(image_id): row for row, image_id in enumerate(split.image_ids)}
    missing = [int(i) for i in record["ids"] if int(i) not in rows]
    if missing:
        raise UserError(f"--pseudo-labels {path}: image id {missing[0]} ({len(missing)} in all) is not in the "
                        f"{name} split of {data_root}; predict that split of this dataset again")
    kept = confident_rows(record, keep, path)
    split = split.subset([rows[int(i)] for i in record["ids"][kept]])
    split = replace(split, xyz=np.asarray(record["xyz"], np.float64)[kept])
    info = {"sha256": file_sha256(path), "split": name, "images": int(len(record["ids"])), "kept": int(len(kept))}
    return split, info


def _fetch(dataset, indices):
    """The batch dict of ``indices`` of ``dataset`` (batched ones serve it whole, others are collated)."""
    if getattr(dataset, "batched", False):
        return dataset.__getitems__(indices)
    return default_collate([dataset[i] for i in indices])


class WeightedUnion(torch.utils.data.Dataset):
    """Datasets end to end, each sample carrying its dataset's loss weight ('weight' (), float32). Serves whole
    batches (``batched``): a batch's samples grouped by dataset, in the order of ``datasets``."""
    batched = True

    def __init__(self, datasets, weights):
        self.datasets, self.weights = list(datasets), [float(w) for w in weights]
        self.starts = np.cumsum([0] + [len(d) for d in self.datasets])

    def __len__(self):
        return int(self.starts[-1])

    def __getitem__(self, i):
        return {key: value[0] for key, value in self.__getitems__([i]).items()}

    def __getitems__(self, indices):
        indices = np.asarray(indices, dtype=np.int64)
        which = np.searchsorted(self.starts, indices, side="right") - 1
        parts = []
        for d, (dataset, weight) in enumerate(zip(self.datasets, self.weights)):
            chosen = indices[which == d] - self.starts[d]
            if len(chosen):
                part = _fetch(dataset, chosen.tolist())
                part["weight"] = torch.full((len(chosen),), weight)
                parts.append(part)
        return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
