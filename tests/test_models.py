"""Every registered model keeps the contract; the Schneider 2020 and Reichardt 2021 families;
--pretrained none|imagenet|PATH."""
import pytest
import torch

import models
from core.common import UserError
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


@pytest.mark.slow
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


# --- Schneider 2020: EfficientNet + 1D heatmaps ------------------------------------------------------------------

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
    model.eval()  # no stochastic depth, fixed BN statistics
    with torch.no_grad():
        _, aux = model(x, return_aux=True)
        model.decoder.to_z.bias[3] += 5.0  # joint 0, depth bin 3 of 8
        _, shifted = model(x, return_aux=True)
    changed = (shifted["logits1d"] - aux["logits1d"]).abs()[0, 0, 2] > 1e-4  # joint 0's depth logits (32,)
    assert changed.any() and not changed.all()
    assert torch.equal(shifted["logits1d"][:, :, :2], aux["logits1d"][:, :, :2])


def test_effnet_skips_feed_the_xy_heatmaps_from_each_encoder_stride():
    """One 1x1 projection per xy block, from the encoder maps of strides 8, 4 and 2 (B0: 40, 24, 32 channels);
    silencing the stride-2 skip changes the u, v logits and leaves the depth logits alone."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    model = models.create_model("effb0_1d", encoder_depth=4, num_blocks=3, channels=16, skips=True,
                                z_readout="pooled").eval()
    assert [skip.in_channels for skip in model.decoder.skips] == [40, 24, 32]
    with torch.no_grad():
        before = model(x, return_aux=True)[1]["logits1d"]
        handle = model.decoder.skips[2].register_forward_hook(lambda module, args, out: out * 0.0)
        after = model(x, return_aux=True)[1]["logits1d"]
        handle.remove()
    assert not torch.allclose(before[:, :, :2], after[:, :, :2])
    assert torch.equal(before[:, :, 2], after[:, :, 2])
    assert len(models.create_model("effb0_1d", channels=16).decoder.skips) == 0  # the paper's decoder
