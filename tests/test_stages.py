"""Training stages (training/stages.py): a run that ends at a larger input size trains each stage at its size from
its own decoded images, keeps best.pt from the last stage and predicts at its size, says the stages in its log,
TensorBoard and summary, and resumes exactly inside the final stage; malformed stages and archs that cannot take a
new size are one line. And bf16 autocast on the CPU (core.precision), only where the processor has bf16."""
import json
import signal
from pathlib import Path

import pytest
import torch

import models
import predict
import train
from core import locations, precision
from core.common import UserError
from models.checkpoints import load_checkpoint, read_checkpoint
from training import stages
from training.checkpoints import CheckpointSaver
from training.config import validate_config
from training.recipes import recipe_config
from training.runstate import Progress
from training.step import forward_loss
from tests.scripts import (TINY, act_at_forward, assert_one_line_error, assert_same_run, log_epochs, run_main)

FINAL_96 = ["--epochs", "3", "--set", 'stages=[{"fraction": 0.3, "img_size": 96}]']   # epochs 1-2 at 64 px, 3 at 96
# EMA, accumulation, a per-step schedule and the top-k average: state the final stage must carry over
FEATURES = ["--set", "ema_decay=0.9", "--set", "accumulate=2", "--set", "schedule=cosine", "--set",
            "average_top_k=2"]


def stage_config(**changes):
    config = recipe_config("ghost_lite_64_cpu")
    config.update(changes)
    return config


def test_the_plan_puts_the_stages_at_the_end_and_the_first_takes_the_rest():
    config = stage_config(epochs=10, img_size=64,
                          stages=[{"fraction": 0.3, "img_size": 96}, {"fraction": 0.1, "img_size": 128}])
    plan = stages.plan(config)
    assert [(s.first_epoch, s.last_epoch, s.img_size) for s in plan] == [(1, 6, 64), (7, 9, 96), (10, 10, 128)]
    assert [stages.stage_at(config, epoch).index for epoch in (1, 6, 7, 9, 10)] == [0, 0, 1, 1, 2]
    assert stages.final_size(config) == 128 and stages.final_size(stage_config(img_size=64)) == 64
    assert stages.describe_sizes(config) == "64 px, then 96 px for epochs 7-9, then 128 px for epochs 10-10"


def test_a_shortened_run_keeps_the_shape_and_drops_a_stage_of_no_epoch():
    recipe = {**recipe_config("hourglass_attn_64_cpu"), "epochs": 68, "stages": [{"fraction": 0.3, "img_size": 96}]}
    assert [(s.last_epoch - s.first_epoch + 1, s.img_size) for s in stages.plan(recipe)] == [(48, 64), (20, 96)]
    shortened = {**recipe, "epochs": 20}
    assert [(s.first_epoch, s.last_epoch, s.img_size) for s in stages.plan(shortened)] == [(1, 14, 64), (15, 20, 96)]
    short = {**recipe, "epochs": 1}    # 0.3 of 1 epoch rounds to none: one stage, at 64 px
    assert [(s.first_epoch, s.last_epoch, s.img_size) for s in stages.plan(short)] == [(1, 1, 64)]
    assert stages.final_size(short) == 64


@pytest.mark.parametrize("stage_list, epochs, message", [
    ([{"fraction": 0.2}], 10, "each stage is {\"fraction\": F, \"img_size\": S}"),
    ([{"fraction": 0.2, "img_size": 96, "lr": 1}], 10, "each stage is"),
    ([{"fraction": 1.0, "img_size": 96}], 10, "F in (0, 1)"),
    ([{"fraction": 0.2, "img_size": 96.5}], 10, "a whole S"),
    ([{"fraction": 0.5, "img_size": 96}, {"fraction": 0.5, "img_size": 128}], 10, "stages take 10 of the 10 epochs, "
                                                                                  "leaving none at img_size 64"),
    ([{"fraction": 0.6, "img_size": 96}], 1, "stages take 1 of the 1 epochs"),
    ([{"fraction": 0.2, "img_size": 100}], 10, "img_size 100 is not a multiple of 32, which ghost_lite needs to take "
                                               "a new input size: choose 96 or 128"),
])
def test_malformed_stages_are_one_line_before_any_work(stage_list, epochs, message, synthetic_96, tmp_path, capsys):
    code, _, err = run_main(train.main, [*TINY, "--epochs", epochs, "--set", f"stages={json.dumps(stage_list)}",
                                         "--data-root", synthetic_96, "--out", tmp_path / "run"], capsys)
    assert_one_line_error(code, err, message)
    assert not (tmp_path / "run").exists()


def test_an_arch_that_cannot_take_a_new_size_is_refused_in_one_line(monkeypatch):
    from dataclasses import replace
    from models import registry
    fixed = replace(registry._REGISTRY["ghost_lite"], resizable=False)
    monkeypatch.setitem(registry._REGISTRY, "ghost_lite", fixed)
    config = stage_config(epochs=4, stages=[{"fraction": 0.25, "img_size": 96}])
    with pytest.raises(UserError, match="arch ghost_lite cannot change its input size during a run .* drop the stages"):
        validate_config(config)
    validate_config(stage_config(epochs=4))  # without stages it trains as before


@pytest.mark.parametrize("name", models.list_models())
def test_every_resizable_arch_takes_two_multiples_of_its_size_with_the_same_weights(name):
    """The registry's claim (resizable, size_multiple) holds: the same weights map two sizes to 21 joints, each in
    its own image's pixels."""
    entry = models.model_entry(name)
    if not entry.resizable:
        pytest.skip(f"{name} keeps one input size")
    model = models.create_model(name, pretrained="none").eval()
    for size in (2 * entry.size_multiple, 3 * entry.size_multiple):
        with torch.no_grad():
            uvd = model(torch.randn(1, 3, size, size))
        assert uvd.shape == (1, 21, 3) and torch.isfinite(uvd).all()


def test_a_later_stage_starts_the_race_for_best_pt_and_the_top_k_again(tmp_path):
    """The first epoch of a later stage is best.pt even when it validates worse (its size is the one predicted at),
    and only that stage's epochs are averaged."""
    config = {**stage_config(epochs=4, stages=[{"fraction": 0.5, "img_size": 96}]), "data_root": str(tmp_path),
              "average_top_k": 2}
    progress = Progress()
    saver = CheckpointSaver(tmp_path, config, {"bone_length_m": 0.01, "root_depth_m": 0.5}, progress)
    weights = {"w": torch.zeros(2)}
    ids, xyz = torch.arange(2).numpy(), torch.zeros(2, 21, 3).numpy()
    plan = stages.plan(config)
    for epoch, val_mm in ((1, 12.0), (2, 10.0), (3, 11.0), (4, 11.5)):
        saver.save_epoch(epoch, stages.stage_at(config, epoch), val_mm, {"w": weights["w"] + epoch}, xyz, ids)
    best = load_checkpoint(tmp_path / "best.pt")
    assert (best["epoch"], best["img_size"], best["best_val_pa_mpjpe_mm"]) == (3, 96, 11.0)
    assert sorted(entry[1] for entry in saver.kept) == [3, 4] and plan[-1].first_epoch == 3


def test_a_run_with_a_final_stage_trains_each_size_and_predicts_at_the_last(synthetic_96, tmp_path, capsys):
    folder = tmp_path / "run"
    code, out, err = run_main(train.main, [*TINY, *FINAL_96, "--set", "cache=true", "--data-root", synthetic_96,
                                           "--out", folder], capsys)
    assert code in (0, None), err
    assert "64 px, then 96 px for epochs 3-3" in out
    assert "stage 2 of 2: epochs 3-3 at 96 px, from its own decoded images" in out
    rows = [line.split(",") for line in (folder / "log.csv").read_text().splitlines()]
    header = rows[0]
    assert [(int(r[header.index("stage")]), int(r[header.index("img_size")])) for r in rows[1:]] == \
        [(1, 64), (1, 64), (2, 96)]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["img_size"] == 96 and [(s["epochs"], s["img_size"]) for s in summary["stages"]] == \
        [([1, 2], 64), ([3, 3], 96)]
    assert all(s["best_val_pa_mpjpe_mm"] > 0 and s["train_images_per_s"] > 0 for s in summary["stages"])
    caches = sorted(path.name for path in Path(locations.root("cache")).iterdir())
    assert any("-train-64px-" in name for name in caches) and any("-train-96px-" in name for name in caches)
    best = folder / "best.pt"
    assert (load_checkpoint(best)["img_size"], read_checkpoint(best)["config"]["img_size"]) == (96, 96)
    # the summary names what best.pt holds, not a better epoch of the first stage
    state = load_checkpoint(best)
    assert summary["best_val_pa_mpjpe_mm"] == state["best_val_pa_mpjpe_mm"]
    assert summary["best_epoch"] == ("average" if "averaged_epochs" in state else state["epoch"])
    assert load_checkpoint(folder / "last.pt")["config"]["img_size"] == 64  # the run's own config, as it was given
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(folder)).Reload()
    assert [event.value for event in events.Scalars("img_size")] == [64, 64, 96]
    code, out, err = run_main(predict.main, ["--ckpt", folder / "best.pt", "--workers", "0", "--device", "cpu",
                                             "--tta", "2", "--out", tmp_path / "pred"], capsys)
    assert code in (0, None), err
    assert ", 96 px, epoch 3" in out


@pytest.mark.slow
def test_sigterm_inside_the_final_stage_resumes_to_the_weights_of_a_run_never_stopped(synthetic_96, tmp_path,
                                                                                     monkeypatch, capsys,
                                                                                     terminal_stop_signals):
    args = [*TINY, *FINAL_96, *FEATURES, "--data-root", synthetic_96]
    straight = tmp_path / "straight"
    train.main([str(a) for a in [*args, "--out", straight]])
    folder = tmp_path / "stopped"
    act_at_forward(monkeypatch, 8 * 2 + 3, lambda: signal.raise_signal(signal.SIGTERM))  # epoch 3, batch 3 of 8
    code, _, err = run_main(train.main, [*args, "--out", folder], capsys)
    assert code == 143 and "holds step 2 of 4 of epoch 3 of 3" in err, err
    state = load_checkpoint(folder / "last.pt")
    assert (state["epoch"], state["position"]["epoch"], state["position"]["img_size"], state["img_size"]) == \
        (2, 3, 96, 96)
    monkeypatch.undo()
    code, out, err = run_main(train.main, [*args, "--out", folder, "--resume"], capsys)
    assert code == 0, err
    assert "after epoch 2 of 3, at step 2 of 4 of epoch 3" in out and "stage 2 of 2" in out
    assert log_epochs(folder) == [1, 2, 3]
    assert_same_run(straight, folder)
    for run in (straight, folder):
        assert load_checkpoint(run / "best.pt")["img_size"] == 96


def random_batch(size, count=2, seed=0):
    """An augmented batch as the trainer sees it: uint8 images and joints inside them."""
    generator = torch.Generator().manual_seed(seed)
    uvd = torch.rand(count, 21, 3, generator=generator) * torch.tensor([size - 8.0, size - 8.0, 1.0]) + \
        torch.tensor([4.0, 4.0, -0.5])
    return {"image": torch.randint(0, 255, (count, 3, size, size), dtype=torch.uint8, generator=generator),
            "uvd": uvd, "visible": torch.ones(count, 21, dtype=torch.bool),
            "K": torch.eye(3).expand(count, 3, 3).clone(), "xyz": torch.rand(count, 21, 3, generator=generator) + 0.5}


def test_the_loss_of_a_later_stage_s_batch_is_taken_at_that_batch_s_size():
    """The heatmap targets and pixel terms follow the images' size, not config['img_size'] (the first stage's)."""
    config = {**recipe_config("hourglass_attn_64_cpu"), "cpu_bf16": False}
    torch.manual_seed(0)
    model = models.create_model(config["arch"], **config["model"]).eval()
    batch = random_batch(96)
    losses = []
    for size in (64, 96):
        torch.manual_seed(1)  # the same tilted views (the recipe's tilted_views term draws them)
        losses.append(forward_loss(model, batch, {**config, "img_size": size}, torch.device("cpu"),
                                   channels_last=False)[0])
    assert losses[0].item() == losses[1].item()


# --- bf16 autocast on the CPU ----------------------------------------------------------------------------------

@pytest.fixture
def cpuinfo(tmp_path, monkeypatch):
    """cpuinfo(text): /proc/cpuinfo reads ``text`` for core.precision."""
    def write(text):
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        monkeypatch.setattr(precision, "CPUINFO", path)
        precision.cpu_bf16_flag.cache_clear()
    yield write
    precision.cpu_bf16_flag.cache_clear()


@pytest.mark.parametrize("text, flag", [
    ("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile\n", "avx512_bf16"),
    ("processor\t: 0\nflags\t\t: fpu sse2 avx512f amx_bf16 amx_tile\n", "amx_bf16"),
    ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n", "bf16"),
    ("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n", ""),
])
def test_the_cpu_gets_bf16_only_where_it_has_bf16_instructions_and_only_when_asked(cpuinfo, text, flag):
    cpuinfo(text)
    chosen = precision.choose("cpu", amp=True, cpu_bf16=True)
    if flag:
        assert (chosen.name, chosen.dtype, chosen.device_type) == ("bf16", torch.bfloat16, "cpu")
        assert chosen.describe() == f"bf16 autocast, native on this CPU ({flag})"
    else:
        assert chosen.name == "fp32" and chosen.describe() == "fp32, this CPU has no bf16 instructions"
    assert precision.choose("cpu", amp=True, cpu_bf16=False).describe() == "fp32"
    assert not chosen.grad_scaler().is_enabled()


@pytest.mark.skipif(not precision.cpu_bf16_flag(), reason="this CPU has no bf16 instructions")
def test_a_cpu_bf16_training_step_computes_its_convolutions_in_bf16_and_its_loss_in_fp32():
    config = {**recipe_config("hourglass_attn_64_cpu"), "cpu_bf16": True, "img_size": 32}
    model = models.create_model(config["arch"], **config["model"])
    seen = []
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    batch = random_batch(32)
    loss, _ = forward_loss(model, batch, config, torch.device("cpu"), channels_last=False)
    loss.backward()
    assert seen and seen[0] == torch.bfloat16
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)
