"""Mixed precision: bf16 only on GPUs with native bf16 (compute capability 8 and up), fp16 with a loss scaler on
older ones (T4, P100, V100), none on the CPU; printed at the start of training and prediction, recorded in the
run. The GPU is simulated: torch's device queries are replaced."""
import json
from pathlib import Path

import pytest
import torch

import predict
import train
from core import precision
from tests.scripts import run_main


@pytest.fixture
def gpu(monkeypatch):
    """A visible GPU of the capability the test sets (``gpu(major, minor)``); is_bf16_supported says yes always,
    as torch does where bf16 is emulated."""
    def set_capability(major, minor):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (major, minor))
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    return set_capability


@pytest.mark.parametrize("capability", [(8, 0), (8, 9), (9, 0), (10, 0)])
def test_native_bf16_gpus_get_bf16_without_a_scaler(gpu, capability):
    gpu(*capability)
    chosen = precision.choose("cuda", amp=True)
    assert chosen.name == "bf16" and chosen.dtype == torch.bfloat16 and not chosen.scaled
    assert f"native on compute capability {capability[0]}.{capability[1]}" in chosen.describe()


@pytest.mark.parametrize("capability", [(7, 5), (7, 0), (6, 0)])   # T4, V100, P100
def test_older_gpus_get_fp16_with_a_loss_scaler_though_torch_calls_bf16_supported(gpu, capability):
    gpu(*capability)
    chosen = precision.choose("cuda", amp=True)
    assert chosen.name == "fp16" and chosen.dtype == torch.float16 and chosen.scaled
    assert "loss scaler" in chosen.describe() and "no native bf16" in chosen.describe()


def test_the_cpu_and_amp_off_run_fp32(gpu):
    for device in ("cpu", torch.device("cpu")):
        chosen = precision.choose(device, amp=True)
        assert chosen.name == "fp32" and chosen.dtype is None and not chosen.scaled
        assert not chosen.grad_scaler().is_enabled()
    gpu(9, 0)
    assert precision.choose("cuda", amp=False).name == "fp32"


def test_the_training_step_the_predictor_and_bench_share_the_choice(gpu, monkeypatch):
    """prediction.inference.autocast, training.step and bench.py's scaler all go through core.precision."""
    import bench
    from prediction import inference
    from training import setup
    seen = []
    real = precision.choose
    monkeypatch.setattr(precision, "choose", lambda device, amp, cpu_bf16=False: seen.append((str(device), amp)) or
                        real(device, amp, cpu_bf16))
    inference.autocast(torch.device("cpu"), True)
    assert seen == [("cpu", True)]
    for module in (bench, setup):
        source = Path(module.__file__).read_text()
        assert "precision.choose(" in source and "is_bf16_supported" not in source


def test_training_prints_the_choice_with_the_device_and_records_it(synthetic_64, tmp_path, capsys):
    data, run = synthetic_64, tmp_path / "run"
    code, out, err = run_main(train.main, ["--arch", "ghost_lite", "--data-root", data, "--epochs", "1",
                                           "--img-size", "32", "--batch-size", "4", "--pretrained", "none",
                                           "--workers", "0", "--device", "cpu", "--set", "cache=false",
                                           "--out", run], capsys)
    assert code in (0, None), err
    assert ", cpu (fp32), run folder" in out
    assert json.loads((run / "config.json").read_text())["precision"] == "fp32"
    assert json.loads((run / "summary.json").read_text())["precision"] == "fp32"
    code, out, err = run_main(predict.main, ["--ckpt", run / "best.pt", "--workers", "0", "--device", "cpu",
                                             "--out", tmp_path / "pred"], capsys)
    assert code in (0, None), err
    assert "images on cpu (fp32" in out


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_a_training_step_on_the_gpu_in_each_precision_moves_the_weights(name, marker_set_12, monkeypatch):
    """The real CUDA path of each choice: the forward pass in its dtype, fp16's loss scaler through the shared
    optimiser step (unscaled for clipping), finite loss, weights that move."""
    import models
    from data import augment
    from tests.scripts import cuda_batch
    from training import recipes
    from training.optimization import make_optimizer
    from training.step import forward_loss, optimizer_step
    if name == "bf16" and torch.cuda.get_device_capability() < precision.NATIVE_BF16_CAPABILITY:
        pytest.skip("this GPU has no native bf16")
    chosen = precision.Precision(name, "forced by the test")
    monkeypatch.setattr(precision, "choose", lambda device, amp: chosen)
    cuda = torch.device("cuda")
    config = {**recipes.recipe_config("ghost_lite"), "img_size": 64, "amp": True}
    model = models.create_model("ghost_lite", **config["model"]).to(cuda).train()
    optimizer, scaler = make_optimizer(model, config), chosen.grad_scaler()
    assert scaler.is_enabled() == (name == "fp16")
    batch = augment.Augmenter(config["augs"], augment.resolve_options(config["aug"]), 64, cuda, seed=0)(
        cuda_batch(marker_set_12, 64))
    dtypes = set()
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, out: dtypes.add(out.dtype) if isinstance(module, torch.nn.Conv2d) else None)
    before = [p.detach().clone() for p in model.parameters()]
    try:
        loss, _ = forward_loss(model, batch, config, cuda, channels_last=False)
    finally:
        hook.remove()
    scaler.scale(loss).backward()
    optimizer_step(model, optimizer, scaler, grad_clip=1.0)
    assert torch.isfinite(loss) and chosen.dtype in dtypes
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), before))
