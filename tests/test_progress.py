"""Progress on stderr for the steps that take long at FreiHAND's size: a live bar on a terminal, plain lines at most
every PROGRESS_LOG_SECONDS in a log, nothing for a step that ends sooner. (The generator's: test_synthetic.)"""
import numpy as np
import pytest
import torch

from core import common
from prediction import ensembling
from prediction import inference
from data.dataset import CachedHandDataset
from data.readers import load_split


@pytest.fixture
def every_update(monkeypatch):
    monkeypatch.setattr(common, "PROGRESS_LOG_SECONDS", 0.0)


def plain_lines(capsys, prefix):
    lines = capsys.readouterr().err.splitlines()
    assert lines and all("\r" not in line and line.startswith(prefix) for line in lines), lines
    return lines


def test_in_a_log_a_short_step_prints_nothing_and_a_long_one_plain_lines(monkeypatch, capsys):
    for _ in common.progress(range(50), desc="quick"):
        pass
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(common, "PROGRESS_LOG_SECONDS", 0.0)
    for _ in common.progress(range(3), desc="slow", unit="img"):
        pass
    lines = plain_lines(capsys, "slow: ")
    assert "3/3 [" in lines[-1] and "img/s" in lines[-1]
    for _ in common.progress(range(3), desc="off", enabled=False):
        pass
    assert capsys.readouterr().err == ""


def test_a_cache_build_shows_progress(marker_set_2_versions, tmp_path, every_update, capsys):
    CachedHandDataset(load_split(marker_set_2_versions, "train"), 64, cache_root=tmp_path / "cache", workers=1)
    assert "10/10 [" in plain_lines(capsys, "decoding train: ")[-1]


def test_prediction_and_validation_show_progress(every_update, capsys):
    class Constant(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 21, 3)

    batches = [{"image": torch.zeros(2, 3, 16, 16, dtype=torch.uint8), "K": torch.eye(3).expand(2, 3, 3),
                "id": torch.arange(2), "bone_length": torch.ones(2)} for _ in range(3)]
    inference.predict_loader(Constant(), batches, torch.device("cpu"), tta=2, desc="validate")
    assert "3/3 [" in plain_lines(capsys, "validate: ")[-1]


def test_fitting_ensemble_weights_shows_progress(every_update, capsys):
    rng = np.random.default_rng(0)
    gt = rng.normal(size=(40, 21, 3))
    ensembling.fit_weights(np.stack([gt + rng.normal(size=gt.shape) * s for s in (0.1, 0.3)]), gt)
    assert "trial" in plain_lines(capsys, "fitting weights on 40 validation predictions: ")[-1]
