"""Pseudo-labels: train.py --pseudo-labels trains on the predicted split's images with the predicted joints,
never reads that split's labels, weighs its samples by pseudo_weight and keeps the surest share."""
import json

import numpy as np
import pytest
import torch

from prediction import ensembling
from models.checkpoints import load_checkpoint
from core.common import UserError
from data.pseudo import WeightedUnion, confident_rows, pseudo_split
from data.readers import load_split
from models.losses import pose_loss
from uploads.records import load_predictions
from uploads.writing import save_record
from tests.scripts import TINY, run_main
import train


def prediction_file(path, data_root, shift_m=0.0, spread=None):
    """A prediction file of the evaluation split: its labels moved by ``shift_m`` metres."""
    split = load_split(data_root, "evaluation")
    record = {"xyz": split.xyz + shift_m, "ids": split.image_ids, "split": "evaluation", "layout": "freihand",
              "data_root": str(data_root)}
    if spread is not None:
        record["spread_mm"] = np.asarray(spread, np.float64)
    save_record(path, record)
    return path


def final_weights(folder):
    return load_checkpoint(folder / "last.pt")["model"]


@pytest.mark.slow
def test_the_predicted_splits_labels_are_never_read(synthetic_64, copy_of, tmp_path, capsys):
    """The same run with the evaluation labels swapped for other hands, and with a file no reader could parse in
    their place, ends with the same weights; other pseudo-labels give other weights (so they really train)."""
    data_root = copy_of(synthetic_64)  # its labels are changed below
    preds = prediction_file(tmp_path / "pred.npz", data_root, shift_m=0.004)
    other = prediction_file(tmp_path / "other.npz", data_root, shift_m=-0.01)
    args = [*TINY, "--epochs", "1", "--data-root", data_root, "--set", "pseudo_weight=0.5"]

    def run(pseudo_labels, folder):
        code, out, err = run_main(train.main, [*args, "--pseudo-labels", pseudo_labels, "--out", tmp_path / folder],
                                  capsys)
        assert code == 0, err
        return out
    assert "pseudo-labels: 6 of 6 images of the evaluation split" in run(preds, "a")
    labels = data_root / "evaluation_xyz.json"
    xyz = np.array(json.loads(labels.read_text()))
    labels.write_text(json.dumps((xyz[::-1] * 1.3).tolist()))     # other hands, other sizes
    run(preds, "b")
    labels.write_text("{not json")                                  # any read of it would fail the run
    run(preds, "c")
    run(other, "d")
    a = final_weights(tmp_path / "a")
    for folder in ("b", "c"):
        for key, value in final_weights(tmp_path / folder).items():
            torch.testing.assert_close(value, a[key], rtol=0, atol=0, msg=f"{folder}: {key}")
    d = final_weights(tmp_path / "d")
    assert any(not torch.equal(a[key], d[key]) for key in a if a[key].is_floating_point())
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["pseudo_labels"] == str(preds) and config["pseudo_weight"] == 0.5


def test_a_training_split_is_refused_as_pseudo_labels(synthetic_64, tmp_path):
    record = load_predictions(prediction_file(tmp_path / "pred.npz", synthetic_64))
    record["split"] = "val"
    with pytest.raises(UserError, match="never from the training data"):
        pseudo_split(record, tmp_path / "pred.npz", synthetic_64)


def test_the_surest_share_is_kept_and_needs_an_agreement_to_rank_by(synthetic_64, tmp_path):
    spread = [5.0, 1.0, 9.0, 2.0, 7.0, 3.0]
    path = prediction_file(tmp_path / "pred.npz", synthetic_64, spread=spread)
    record = load_predictions(path)
    assert confident_rows(record, 0.5, path).tolist() == [1, 3, 5]
    split, info = pseudo_split(record, path, synthetic_64, keep=0.5)
    assert info["kept"] == 3 and info["images"] == 6 and len(split) == 3
    np.testing.assert_array_equal(split.xyz, record["xyz"][[1, 3, 5]])
    with pytest.raises(UserError, match="records no agreement"):
        confident_rows(load_predictions(prediction_file(tmp_path / "plain.npz", synthetic_64)), 0.5, path)


def test_an_ensembles_spread_is_its_members_disagreement():
    rng = np.random.default_rng(0)
    hand = rng.normal(size=(4, 21, 3)) * 0.05
    same = ensembling.member_spread_mm(np.stack([hand, hand + 0.3]), np.array([0.5, 0.5]))  # a shift: no disagreement
    np.testing.assert_allclose(same, 0.0, atol=1e-9)
    moved = hand.copy()
    moved[:, 4] += [0.0, 0.0, 0.021]                                # one fingertip 21 mm off in one member
    spread = ensembling.member_spread_mm(np.stack([hand, moved]), np.array([0.5, 0.5]))
    np.testing.assert_allclose(spread, np.sqrt(0.5 * 10.5 ** 2 * 2 / 21), rtol=1e-9)


class Fixed(torch.utils.data.Dataset):
    def __init__(self, values):
        self.values = values

    def __len__(self):
        return len(self.values)

    def __getitem__(self, i):
        return {"x": torch.tensor(self.values[i])}


def test_weighted_union_serves_each_sample_with_its_datasets_weight():
    union = WeightedUnion([Fixed([0.0, 1.0, 2.0]), Fixed([10.0, 11.0])], [1.0, 0.25])
    assert len(union) == 5
    batch = union.__getitems__([4, 0, 3, 2])
    assert batch["x"].tolist() == [0.0, 2.0, 11.0, 10.0] and batch["weight"].tolist() == [1.0, 1.0, 0.25, 0.25]


def test_a_sample_weight_scales_its_share_of_every_loss_term():
    torch.manual_seed(0)
    uvd, true = torch.rand(2, 21, 3) * 64, torch.rand(2, 21, 3) * 64
    target = {"uvd": true, "visible": torch.ones(2, 21, dtype=torch.bool), "K": torch.eye(3).expand(2, 3, 3) * 200,
              "root_depth": torch.full((2,), 0.5), "size": 64}
    target["K"] = target["K"].clone()
    target["K"][:, 2, 2] = 1.0
    weights = {"coord_l1": 1.0, "depth_l1": 1.0, "pose_l2": 1.0, "bone_length": 1.0}
    plain, _ = pose_loss(uvd, {}, target, weights)
    ones, _ = pose_loss(uvd, {}, {**target, "weight": torch.ones(2)}, weights)
    torch.testing.assert_close(ones, plain)
    only_first, _ = pose_loss(uvd[:1], {}, {k: v[:1] if torch.is_tensor(v) else v for k, v in target.items()}, weights)
    dropped, _ = pose_loss(uvd, {}, {**target, "weight": torch.tensor([1.0, 0.0])}, weights)
    torch.testing.assert_close(dropped, only_first)


def test_pseudo_options_are_checked_before_the_work(synthetic_64, tmp_path, capsys):
    code, _, err = run_main(train.main, [*TINY, "--epochs", "1", "--data-root", synthetic_64, "--set",
                                         "pseudo_keep=1.5", "--out", tmp_path / "x"], capsys)
    assert code == 2 and "pseudo_keep=1.5: must lie in" in err
    code, _, err = run_main(train.main, [*TINY, "--epochs", "1", "--data-root", synthetic_64, "--pseudo-labels",
                                         tmp_path / "none.npz", "--out", tmp_path / "y"], capsys)
    assert code == 2 and "none.npz does not exist" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
