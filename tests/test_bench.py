"""bench.py on the CPU with tiny settings: every stage runs and bench.json holds one figure per stage."""
import json
import math

import torch

import bench


def test_bench_cpu_tiny_writes_one_figure_per_stage(marker_set_12, tmp_path, capsys):
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        bench.main(["--device", "cpu", "--archs", "ghost_lite", "--recipes", "effb0_unet_64_cpu", "--img-size", "64",
                    "--model-size", "64", "--batch-size", "4", "--steps", "1", "--warmup", "1", "--loader-batches", "2",
                    "--loader-seconds", "0", "--tta", "2", "--workers", "0", "--threads", "1",
                    "--data-root", str(marker_set_12), "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    result = json.loads(out.read_text())
    stages = ["loader_jpeg", "loader_cache", "augment_default", "augment_full", "augment/ghost_lite",
              "train_step/ghost_lite", "predict_tta/ghost_lite", "augment/effb0_unet_64_cpu",
              "train_step/effb0_unet_64_cpu", "predict_tta/effb0_unet_64_cpu"]
    assert list(result["stages"]) == stages and result["loader_headroom"]["ghost_lite"] > 0
    assert all(0 < result["augment_share"][name] < 1 for name in ("ghost_lite", "effb0_unet_64_cpu"))
    assert all(math.isfinite(v) and v > 0 for v in result["stages"].values())
    assert result["machine"]["cores"] >= 1 and result["machine"]["torch"] == torch.__version__
    assert result["machine"]["gpu"] is None and result["settings"]["img_size"] == 64
    printed = capsys.readouterr().out
    assert all(stage in printed for stage in stages) and f"wrote {out}" in printed
    assert "effb0_unet_64_cpu: the cached loader feeds its training step" in printed


def test_bench_refuses_an_unknown_recipe_in_one_line(tmp_path, capsys):
    from tests.scripts import run_main
    code, _, err = run_main(bench.main, ["--recipes", "effb0_gpu", "--out", tmp_path / "b.json"], capsys)
    assert code == 2 and "--recipes effb0_gpu: no such recipe; valid names:" in err
