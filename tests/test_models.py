"""Every registered model keeps the contract; the seed 000/001 families; --pretrained none|imagenet|PATH."""
import huggingface_hub.constants
import pytest
import timm
import torch

import models
from common import UserError
from models.effnet1d import soft_argmax_1d
from models.losses import pose_loss

ALL_MODELS = models.list_models()


def parameter_count(model):
    return sum(p.numel() for p in model.parameters())


# --- the contract, over every registered model -------------------------------------------------------------

@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_model_returns_21_uvd(name):
    torch.manual_seed(0)
    model = models.create_model(name, pretrained="none").eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        uvd = model(x)
        uvd_aux, aux = model(x, return_aux=True)
    assert uvd.shape == (2, 21, 3) and torch.isfinite(uvd).all()
    assert torch.allclose(uvd, uvd_aux)
    assert isinstance(aux, dict)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_every_model_overfits_a_small_batch(name):
    """A fixed batch of 4 random images with random targets inside the image: the loss falls below half."""
    torch.manual_seed(0)
    size, batch = 32, 4
    images = torch.randn(batch, 3, size, size)
    uv = torch.rand(batch, 21, 2) * (size - 8) + 4
    d = torch.rand(batch, 21, 1) - 0.5
    target = {"uvd": torch.cat([uv, d], -1), "visible": torch.ones(batch, 21), "K": torch.eye(3).expand(batch, 3, 3),
              "root_depth": torch.ones(batch), "size": size}
    model = models.create_model(name, pretrained="none").train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        loss, _ = pose_loss(model(images), {}, target, {"coord_l1": 1.0})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if losses[-1] < 0.3 * losses[0]:  # clearly fitting: save the remaining steps
            break
    assert losses[-1] < 0.5 * losses[0], f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_unknown_arch_lists_valid_names():
    with pytest.raises(UserError, match="valid names: .*effb4_1d.*resnet34"):
        models.create_model("resnet35")


# --- seed 000: EfficientNet + 1D heatmaps ------------------------------------------------------------------

@pytest.mark.parametrize("name, low, high", [("effb4_1d", 18e6, 21e6), ("effb0_1d", 4.5e6, 6.0e6)])
def test_effnet_parameter_counts_match_the_paper(name, low, high):
    assert low <= parameter_count(models.create_model(name)) <= high


def test_effnet_drop_connect_option_switches_stochastic_depth():
    """The implementation's 0.2 makes two training-mode forwards differ; 0 (the from-scratch recipe) does not."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    for drop_connect, differs in [(0.2, True), (0.0, False)]:
        model = models.create_model("effb0_1d", channels=16, drop_connect=drop_connect).train()
        for layer in model.modules():   # freeze the batch statistics' effect: same batch, same normalisation
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.momentum = 0.0
        with torch.no_grad():
            assert (not torch.equal(model(x), model(x))) == differs


def test_effnet_heatmaps_span_the_input():
    """4 blocks double 4 -> 64 bins at 128 px; 3 blocks give 32; each heatmap is a distribution."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 128, 128)
    for num_blocks, length in [(4, 64), (3, 32)]:
        model = models.create_model("effb0_1d", num_blocks=num_blocks, channels=32).eval()
        with torch.no_grad():
            _, aux = model(x, return_aux=True)
        probs = aux["heatmaps1d"]
        assert probs.shape == (2, 21, 3, length)
        assert torch.allclose(probs.sum(-1), torch.ones(2, 21, 3))


def test_effnet_stride16_encoder_and_pooled_depth_readout():
    """encoder_depth 4 decodes the stride-16 features (3 blocks: 4 -> 32 bins at 64 px) and freezes the blocks
    it never runs; the pooled z read-out gives every depth bin its own weights, so a depth logit can change
    without any change in the image columns (a pure bias shift of one bin)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    model = models.create_model("effb0_1d", encoder_depth=4, num_blocks=3, channels=16, z_readout="pooled",
                                depth_bins=8)
    uvd, aux = model(x, return_aux=True)
    assert uvd.shape == (2, 21, 3) and aux["logits1d"].shape == (2, 21, 3, 32)
    uvd.sum().backward()
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(model.get_parameter(name).grad is not None for name in trainable)
    assert any(not p.requires_grad for p in model.encoder._blocks.parameters())
    with torch.no_grad():
        model.decoder.to_z.bias[3] += 5.0  # joint 0, depth bin 3 of 8
        _, shifted = model(x, return_aux=True)
    changed = (shifted["logits1d"] - aux["logits1d"]).abs()[0, 0, 2] > 1e-4  # joint 0's depth logits (32,)
    assert changed.any() and not changed.all()
    assert torch.equal(shifted["logits1d"][:, :, :2], aux["logits1d"][:, :, :2])


def test_soft_argmax_puts_a_peak_on_its_pixel():
    """32 bins over a 128 px input: bin i covers pixels 4i .. 4i+3, centre 4i + 1.5; depth bin k of 32 sits at
    (k + 0.5) / 16 - 1."""
    logits = torch.full((1, 21, 3, 32), -1e4)
    logits[0, :, 0, 10] = 0.0  # u: pixels 40..43 -> 41.5
    logits[0, :, 1, 0] = 0.0   # v: pixels 0..3 -> 1.5
    logits[0, :, 2, 24] = 0.0  # d: 24.5 / 16 - 1 = 0.53125
    uvd, probs = soft_argmax_1d(logits, 128)
    assert torch.allclose(uvd[0], torch.tensor([41.5, 1.5, 0.53125]).expand(21, 3))
    assert probs[0, 0, 0, 10] == 1.0


# --- seed 001: ResNet regression ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, head", [("resnet34", "backbone.fc"), ("res50x2_res34", "pipeline.stage3.fc")])
def test_resnet_outputs_are_normalised_uvd(name, head):
    """A zero output is the input's centre at root depth: u = v = 128 / 2 - 0.5 = 63.5, d = 0."""
    model = models.create_model(name).eval()
    fc = model.get_submodule(head)
    torch.nn.init.zeros_(fc.weight)
    torch.nn.init.zeros_(fc.bias)
    with torch.no_grad():
        uvd = model(torch.randn(2, 3, 128, 128))
    assert torch.allclose(uvd, torch.tensor([63.5, 63.5, 0.0]).expand(2, 21, 3))


# --- --pretrained --------------------------------------------------------------------------------------------

def test_imagenet_without_network_is_a_user_error(monkeypatch, tmp_path):
    """No network (offline mode, empty cache): one line naming the arch and the offline choices."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    for name in ["effb0_1d", "resnet34"]:
        with pytest.raises(UserError, match=f"^{name}: .*--pretrained none.*--pretrained PATH") as err:
            models.create_model(name, pretrained="imagenet")
        assert "\n" not in str(err.value)


def test_missing_weights_file_is_a_user_error(tmp_path):
    path = tmp_path / "nowhere.pt"
    with pytest.raises(UserError, match="nowhere.pt"):
        models.create_model("effb0_1d", pretrained=str(path))


def test_unreadable_weights_file_is_a_user_error(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a weights file")
    with pytest.raises(UserError, match="garbage.pt"):
        models.create_model("resnet34", pretrained=str(path))


def test_encoder_weights_round_trip(tmp_path):
    """A bare encoder state dict, and a checkpoint of the whole model, load into the encoder exactly."""
    torch.manual_seed(0)
    source = models.create_model("effb0_1d", channels=16)
    torch.save(source.encoder.state_dict(), tmp_path / "encoder.pt")
    torch.save({"model": source.state_dict(), "config": {"arch": "effb0_1d"}}, tmp_path / "best.pt")
    for file in ["encoder.pt", "best.pt"]:
        loaded = models.create_model("effb0_1d", pretrained=str(tmp_path / file), channels=16)
        for key, value in source.encoder.state_dict().items():
            assert torch.equal(loaded.encoder.state_dict()[key], value), (file, key)


def test_imagenet_classifier_file_loads_into_the_resnet_backbone(tmp_path):
    """An ImageNet-shaped timm file (1000 classes): everything but the classifier loads; fc keeps its init."""
    torch.manual_seed(0)
    imagenet = timm.create_model("resnet34", num_classes=1000)
    torch.save(imagenet.state_dict(), tmp_path / "resnet34_imagenet.pt")
    model = models.create_model("resnet34", pretrained=str(tmp_path / "resnet34_imagenet.pt"))
    assert torch.equal(model.backbone.conv1.weight, imagenet.conv1.weight)
    assert model.backbone.fc.weight.shape == (63, 512)


def test_weights_of_another_backbone_are_a_user_error(tmp_path):
    torch.save(models.create_model("effb0_1d").encoder.state_dict(), tmp_path / "b0.pt")
    with pytest.raises(UserError, match="b0.pt.*does not fit the effb4_1d backbone"):
        models.create_model("effb4_1d", pretrained=str(tmp_path / "b0.pt"))
