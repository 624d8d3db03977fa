"""ONNX export with parity (predict.py --export onnx) and onnxruntime as a prediction backend."""
import numpy as np
import pytest

from prediction import onnx_backend
from models.checkpoints import load_checkpoint
from training.checkpoints import save_checkpoint
from tests.scripts import assert_one_line_error, leftovers, run_predict


@pytest.mark.slow
def test_export_writes_a_file_that_agrees_with_pytorch(exported):
    assert onnx_backend.onnx_path(exported).is_file() and not leftovers(exported.parent)


@pytest.mark.slow
def test_onnxruntime_predicts_the_same_upload_as_pytorch(exported, marker_set, tmp_path, capsys):
    ckpt = exported
    for backend in ("torch", "onnxruntime"):
        code, out, err = run_predict(["--ckpt", ckpt, "--data-root", marker_set, "--tta", "4", "--backend", backend,
                                  "--out", tmp_path / backend], capsys)
        assert code == 0, err
    a, b = (np.load(tmp_path / f"{backend}.npz")["xyz"] for backend in ("torch", "onnxruntime"))
    assert np.abs(a - b).max() < 1e-4  # metres: within the export's tolerance after the same TTA and root depth


@pytest.mark.slow
def test_a_file_from_other_weights_is_refused(exported, marker_set, tmp_path, capsys):
    ckpt = exported
    stale = tmp_path / "run" / "best.pt"
    stale.parent.mkdir()
    state = load_checkpoint(ckpt)
    state["epoch"] = 1
    save_checkpoint(state, stale)
    onnx_backend.onnx_path(stale).write_bytes(onnx_backend.onnx_path(ckpt).read_bytes())
    code, _, err = run_predict(["--ckpt", stale, "--data-root", marker_set, "--backend", "onnxruntime"], capsys)
    assert_one_line_error(code, err, "was not exported from the current", "--export onnx")
    onnx_backend.onnx_path(stale).unlink()
    code, _, err = run_predict(["--ckpt", stale, "--data-root", marker_set, "--backend", "onnxruntime"], capsys)
    assert_one_line_error(code, err, "not found: export the checkpoint first", "--export onnx")


@pytest.mark.slow
def test_a_file_that_disagrees_is_not_kept(exported, marker_set, tmp_path, capsys, monkeypatch):
    ckpt = tmp_path / "run" / "best.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(exported.read_bytes())
    monkeypatch.setattr(onnx_backend, "TOLERANCE_UV_PX", -1.0)
    code, _, err = run_predict(["--ckpt", ckpt, "--export", "onnx", "--data-root", marker_set], capsys)
    assert_one_line_error(code, err, "onnxruntime disagrees with PyTorch", "not kept")
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["best.pt"]


def test_differences_are_measured_in_pixels_and_millimetres():
    a = np.zeros((2, 21, 3))
    b = a.copy()
    b[1, 3] = [0.002, -0.004, 0.001]
    uv_px, depth_mm = onnx_backend.uvd_differences(a, b)
    assert uv_px == pytest.approx(0.004) and depth_mm == pytest.approx(0.15)
    assert onnx_backend.within_tolerance(uv_px, 0.05) and not onnx_backend.within_tolerance(uv_px, depth_mm)
