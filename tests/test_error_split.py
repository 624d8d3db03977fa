"""tools/error_split.py: each figure puts the truth in for the half it names, the lifting network reads the true
2D pose only while asked, and the script prints the three figures of a labelled split."""
import numpy as np
import pytest
import torch

from core.common import UserError
from core.geometry import xyz_to_uvd
from data.dataset import make_dataset
from data.loader import make_loader
from data.readers import load_split
from models.checkpoints import load_model, read_checkpoint
from prediction.inference import predict_batch
from scoring.metrics import pa_mpjpe
from tests.checkpoints import IMG_SIZE, TINY_HOURGLASS, write_checkpoint
from tools import error_split
from training.step import lifting_network


class Echo(torch.nn.Module):
    """A 'model' that answers every image with the given uvd (B, J, 3): the truth, moved where a test says."""

    def __init__(self, uvd):
        super().__init__()
        self.uvd = uvd

    def forward(self, x):
        return self.uvd.float()


@pytest.fixture(scope="module")
def batch(marker_set):
    dataset = make_dataset(load_split(marker_set, "evaluation"), IMG_SIZE)
    return next(iter(make_loader(dataset, 3, train=False, workers=0)))


@pytest.fixture(scope="module")
def ckpt(marker_set, tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("runs") / "hg" / "best.pt", "hourglass_attn", marker_set,
                            model=TINY_HOURGLASS)


def errors_mm(joints, batch):
    return {name: float(pa_mpjpe(xyz.numpy(), batch["xyz"].double().numpy()).mean() * 1000.0)
            for name, xyz in joints.items()}


def test_each_figure_puts_the_truth_in_for_its_own_half(batch):
    true = xyz_to_uvd(batch["xyz"].double(), batch["K"].double())                      # (B, J, 3)
    exact = errors_mm(error_split.batch_joints(Echo(true), batch, None), batch)
    assert max(exact.values()) < 1e-3
    rng = np.random.default_rng(0)
    uv_off = true + torch.cat([torch.from_numpy(rng.normal(0, 3, (*true.shape[:2], 2))),
                               torch.zeros(*true.shape[:2], 1, dtype=true.dtype)], -1)  # 2D off by ~3 px
    off_2d = errors_mm(error_split.batch_joints(Echo(uv_off), batch, None), batch)
    assert off_2d["predicted"] > 1.0 and off_2d["true 2D"] < 1e-3
    assert off_2d["true depth"] == pytest.approx(off_2d["predicted"])
    d_off = true + torch.cat([torch.zeros(*true.shape[:2], 2, dtype=true.dtype),
                              torch.from_numpy(rng.normal(0, 0.1, (*true.shape[:2], 1)))], -1)
    off_depth = errors_mm(error_split.batch_joints(Echo(d_off), batch, None), batch)
    assert off_depth["predicted"] > 1.0 and off_depth["true depth"] < 1e-3
    assert off_depth["true 2D"] == pytest.approx(off_depth["predicted"])


def test_the_lifting_network_reads_the_true_pose_only_while_asked(ckpt, batch):
    model = load_model(read_checkpoint(ckpt), ckpt)
    true_uv = xyz_to_uvd(batch["xyz"].double(), batch["K"].double())[..., :2].float()
    before = predict_batch(model, batch["image"])
    with error_split.lifting_reads(lifting_network(model), {"uv": true_uv}):
        fed = predict_batch(model, batch["image"])
    after = predict_batch(model, batch["image"])
    torch.testing.assert_close(fed[..., :2], true_uv)             # the read-out replaced by the truth
    assert not torch.allclose(fed[..., 2], before[..., 2])         # and the depths lifted from it
    torch.testing.assert_close(after, before)                      # the hook is gone


def test_the_script_prints_three_figures_of_each_split(ckpt, marker_set, capsys):
    error_split.main(["--ckpt", str(ckpt), "--data-root", str(marker_set), "--split", "evaluation"])
    head, line = capsys.readouterr().out.strip().splitlines()
    assert head.endswith("at 64 px, no TTA; true 2D: the true 2D pose with the depths the lifting network reads "
                         "from it")
    split, figures = line.split(": ")
    assert split == "evaluation, 3 hands"
    assert [part.split(" mm")[0].rsplit(" ", 1)[0] for part in figures.split(" | ")] == list(error_split.FIGURES)


def test_an_unlabelled_split_is_refused(ckpt, marker_set):
    state = read_checkpoint(ckpt)
    unlabelled = load_split(marker_set, "evaluation", labels=False)
    with pytest.raises(UserError, match="has no labels"):
        error_split.split_errors(load_model(state, ckpt), unlabelled, IMG_SIZE, state["stats"]["constant_shape_m"])
