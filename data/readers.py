"""Readers for the two dataset layouts, detected automatically, and the saved validation split.

FreiHAND v2                                   MP21 course layout
  training/rgb/%08d.jpg  (versions x N)         {train,val,test}/%08d.jpg
  training/mask/%08d.jpg (N, version 0)         {split}_K.json, {split}_xyz.json (no test xyz)
  training_{K,xyz,scale}.json (N each)
  evaluation/rgb/%08d.jpg
  evaluation_{K,scale}.json [, evaluation_xyz.json]

In both, annotation index = image index % number of annotations. Labels are kept in FreiHAND joint order.
Split names: FreiHAND 'train' / 'val' (held out from training/ by annotation index) / 'evaluation'; MP21
'train' / 'val' / 'test'. 'test' and 'evaluation' name the submission split of either layout.
"""
import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from core import locations
from core.common import UserError, atomic_write
from core.json_files import json_text

VAL_SPLIT_FILE = "val_split.json"
VAL_FRACTION = 0.05
VAL_SEED = 0
IMAGE_NAME = re.compile(r"^(\d{8})\.jpg$")

FREIHAND_HINT = "expected FreiHAND v2 (training/rgb/, training_K.json, ...) or MP21 (train/, train_K.json, ...)"


@dataclass(frozen=True)
class Split:
    """One split's images and labels, one row per image (labels repeated over image versions)."""
    name: str
    layout: str                  # 'freihand' or 'mp21'
    root: Path
    image_paths: list            # (N,) str
    image_ids: np.ndarray        # (N,) int64, the image's file index in its folder
    ann_ids: np.ndarray          # (N,) int64, image id % number of annotations
    K: np.ndarray                # (N, 3, 3) float64 camera matrix of the original image
    xyz: np.ndarray | None       # (N, 21, 3) float64 metres, FreiHAND order; None when unlabelled
    scale: np.ndarray | None     # (N,) float64 metres, length of geometry.SCALE_BONE; None when unknown
    mask_paths: list | None      # (N,) str or None per image; None when the layout has no masks
    num_annotations: int         # annotations in the folder the split was read from

    def __len__(self):
        return len(self.image_paths)

    @property
    def labelled(self):
        return self.xyz is not None

    def subset(self, rows):
        """The split restricted to ``rows`` (index array), keeping the row order given."""
        rows = np.asarray(rows, dtype=np.int64)
        pick = lambda seq: None if seq is None else [seq[r] for r in rows]
        take = lambda arr: None if arr is None else arr[rows]
        return replace(self, image_paths=pick(self.image_paths), image_ids=self.image_ids[rows],
                       ann_ids=self.ann_ids[rows], K=self.K[rows], xyz=take(self.xyz),
                       scale=take(self.scale), mask_paths=pick(self.mask_paths))


def detect_layout(root):
    """'freihand', 'mp21' or None when ``root`` holds neither."""
    root = Path(root)
    if (root / "training_K.json").is_file() or (root / "evaluation_K.json").is_file():
        return "freihand"
    if (root / "train_K.json").is_file() or (root / "test_K.json").is_file():
        return "mp21"
    return None


def split_names(layout):
    return {"freihand": ("train", "val", "evaluation"), "mp21": ("train", "val", "test")}[layout]


def submission_split(layout):
    return {"freihand": "evaluation", "mp21": "test"}[layout]


def load_split(root, name, folds=0, fold=0, labels=True):
    """Read split ``name`` of the dataset at ``root``; a missing or inconsistent file is a UserError.

    FreiHAND 'train' / 'val' are the saved 5 % hold-out, or with ``folds`` K > 0 the complement / fold ``fold``
    of a K-fold split by hand (``fold_val_ids``). ``labels`` False: the split's *_xyz.json is not opened
    (pseudo-labelling must not read what it predicts)."""
    root = Path(root)
    layout = detect_layout(root)
    if layout is None:
        raise UserError(f"no dataset at {root}: {FREIHAND_HINT}")
    if name in ("test", "evaluation"):
        name = submission_split(layout)
    if name not in split_names(layout):
        raise UserError(f"unknown split {name!r} for the {layout} layout at {root}; "
                        f"choose one of {', '.join(split_names(layout))}")
    if layout == "mp21":
        if folds:
            raise UserError(f"{root}: the MP21 layout has its own val/ split; --folds needs the FreiHAND layout")
        return _read_folder(root, name, layout, image_dir=root / name, prefix=name, labels=labels)
    if name == "evaluation":
        return _read_folder(root, name, layout, image_dir=root / "evaluation" / "rgb", prefix="evaluation",
                            labels=labels)
    training = _read_folder(root, name, layout, image_dir=root / "training" / "rgb", prefix="training",
                            mask_dir=root / "training" / "mask", labels=labels)
    held_out = (fold_val_ids(training.ann_ids, folds, fold) if folds
                else load_or_make_val_split(root, training.num_annotations))
    in_val = np.isin(training.ann_ids, held_out)
    return training.subset(np.flatnonzero(in_val if name == "val" else ~in_val))


def check_cameras(K, path):
    """Every K (N, 3, 3) must be a pinhole camera matrix: positive focal lengths, last row (0, 0, 1). A singular
    or malformed one would put its sample's labels at nonsense pixels (or fail the inverse later)."""
    bad = ~((K[:, 0, 0] > 0) & (K[:, 1, 1] > 0) & np.all(np.abs(K[:, 2] - (0.0, 0.0, 1.0)) < 1e-6, axis=-1)
            & (np.abs(np.linalg.det(K)) > 1e-9))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise UserError(f"{path}: entry {i} is not a camera matrix ({K[i].tolist()}; {int(bad.sum())} such in all): "
                        f"it needs positive focal lengths and a last row 0 0 1; fix or re-download the file")


def _read_folder(root, name, layout, image_dir, prefix, mask_dir=None, labels=True):
    K = _read_json_array(root / f"{prefix}_K.json", (3, 3))
    check_cameras(K, root / f"{prefix}_K.json")
    n_ann = len(K)
    xyz = (_read_json_array(root / f"{prefix}_xyz.json", (21, 3), optional=True, expect_len=n_ann, K_file=prefix)
           if labels else None)
    scale = _read_json_array(root / f"{prefix}_scale.json", (), optional=True, expect_len=n_ann, K_file=prefix)
    image_ids = _list_images(image_dir)
    if len(image_ids) % n_ann:
        raise UserError(f"partial dataset: {image_dir} holds {len(image_ids)} images, not a multiple of the "
                        f"{n_ann} annotations in {root / f'{prefix}_K.json'}; re-download or re-extract it")
    ann_ids = image_ids % n_ann
    mask_paths = None
    if mask_dir is not None:
        # Masks exist for one image version only (mask i belongs to image i < n_ann).
        if not mask_dir.is_dir():
            raise UserError(f"partial dataset: {mask_dir} is missing; re-extract the FreiHAND archive")
        mask_paths = [str(mask_dir / f"{i:08d}.jpg") if i < n_ann else None for i in image_ids]
        missing = [p for p in mask_paths[:n_ann] if p is not None and not os.path.isfile(p)]
        if missing:
            raise UserError(f"partial dataset: mask {missing[0]} is missing ({len(missing)} in all); "
                            f"re-extract the FreiHAND archive")
    return Split(name=name, layout=layout, root=root,
                 image_paths=[str(image_dir / f"{i:08d}.jpg") for i in image_ids],
                 image_ids=image_ids, ann_ids=ann_ids, K=K[ann_ids],
                 xyz=None if xyz is None else xyz[ann_ids],
                 scale=None if scale is None else scale[ann_ids], mask_paths=mask_paths,
                 num_annotations=n_ann)


def _list_images(image_dir):
    """Sorted image ids (int64) of ``%08d.jpg`` files, which must run 0..N-1 without gaps."""
    if not image_dir.is_dir():
        raise UserError(f"partial dataset: image folder {image_dir} is missing; re-extract the dataset there")
    ids = sorted(int(m.group(1)) for m in map(IMAGE_NAME.match, os.listdir(image_dir)) if m)
    if not ids:
        raise UserError(f"partial dataset: no %08d.jpg images in {image_dir}")
    if ids[-1] != len(ids) - 1:
        gap = next(i for i, v in enumerate(ids) if i != v)
        raise UserError(f"partial dataset: {image_dir / f'{gap:08d}.jpg'} is missing "
                        f"(found {len(ids)} images up to {ids[-1]:08d}.jpg); re-extract the dataset")
    return np.asarray(ids, dtype=np.int64)


def _read_json_array(path, item_shape, optional=False, expect_len=None, K_file=None):
    if not path.is_file():
        if optional:
            return None
        raise UserError(f"partial dataset: {path} is missing; {FREIHAND_HINT}")
    try:
        with open(path) as f:
            values = np.asarray(json.load(f), dtype=np.float64)
    except (json.JSONDecodeError, ValueError) as err:
        raise UserError(f"{path} is not a JSON list of {item_shape} arrays ({err}); re-download it") from None
    if values.ndim != 1 + len(item_shape) or values.shape[1:] != item_shape:
        expected = "(N" + "".join(f", {d}" for d in item_shape) + ")"
        raise UserError(f"{path} holds an array of shape {values.shape}, expected {expected}; re-download it")
    if expect_len is not None and len(values) != expect_len:
        raise UserError(f"{path} has {len(values)} entries but {K_file}_K.json has {expect_len}; "
                        f"the annotation files must come from the same release")
    if not np.isfinite(values).all():
        raise UserError(f"{path} holds non-finite values; re-download it")
    return values


def load_all_training(root):
    """Every image of a FreiHAND layout's training/ folder (hold-out and folds alike): the ground truth of
    out-of-fold predictions."""
    root = Path(root)
    if detect_layout(root) != "freihand":
        raise UserError(f"{root}: out-of-fold predictions need the FreiHAND layout (training/ split by hand)")
    return _read_folder(root, "train", "freihand", image_dir=root / "training" / "rgb", prefix="training",
                        mask_dir=root / "training" / "mask")


def fold_val_ids(ann_ids, folds, fold):
    """Annotation ids (sorted) of fold ``fold`` of scikit-learn's GroupKFold over the images, grouped by hand
    (annotation id), so all image versions of a hand fall in one fold. Shuffled with VAL_SEED; the same
    annotations and K always give the same folds."""
    from sklearn.model_selection import GroupKFold
    if not 2 <= folds <= len(np.unique(ann_ids)) or not 0 <= fold < folds:
        raise UserError(f"--folds {folds} --fold {fold}: need 2 <= folds <= the number of hands and "
                        f"0 <= fold < folds")
    splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=VAL_SEED)
    _, val_rows = list(splitter.split(ann_ids, groups=ann_ids))[fold]
    return np.unique(ann_ids[val_rows])


def load_or_make_val_split(root, n_annotations, fraction=VAL_FRACTION, seed=VAL_SEED):
    """Annotation ids held out for validation: made once, saved where the project writes (``data.derived``, never
    in ``root``), reused by every script. A val_split.json that an older version saved in ``root`` is still read."""
    from data.derived import derived_folder, prune_gone
    path = derived_folder(root) / VAL_SPLIT_FILE
    for saved in (Path(root) / VAL_SPLIT_FILE, path):   # an older version's file in the root first
        if saved.is_file():
            return _read_val_split(saved, n_annotations)
    from sklearn.model_selection import GroupShuffleSplit
    hands = np.arange(n_annotations)   # one annotation per hand: its image versions follow it to the same side
    n_val = max(1, round(n_annotations * fraction))
    splitter = GroupShuffleSplit(n_splits=1, test_size=n_val, random_state=seed)
    val = np.sort(next(splitter.split(hands, groups=hands))[1])
    record = {"num_annotations": n_annotations, "fraction": fraction, "seed": seed, "val_ann_ids": val.tolist(),
              "data_root": str(Path(root).resolve())}
    try:
        prune_gone()
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp:
            tmp.write_text(json_text(record))
    except OSError as err:
        raise UserError(f"cannot save the validation split to {path} ({err.strerror}); make that folder "
                        f"writable or move the cache with {locations.setting('cache')}") from None
    return val


def _read_val_split(path, n_annotations):
    """The annotation ids a saved val_split.json holds, checked against the dataset's count."""
    try:
        with open(path) as f:
            saved = json.load(f)
        count, val = saved["num_annotations"], np.asarray(saved["val_ann_ids"], dtype=np.int64)
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path} is damaged ({type(err).__name__}: {err}); delete it to make a new split "
                        f"(the same seed makes the same split)") from None
    if count != n_annotations:
        raise UserError(f"{path} was made for {count} annotations, the dataset has {n_annotations}; delete "
                        f"{path} to make a new split")
    if val.ndim != 1 or len(val) == 0 or val.min() < 0 or val.max() >= n_annotations:
        raise UserError(f"{path} lists annotation ids outside 0..{n_annotations - 1}; delete it to make a new "
                        f"split")
    return val
