"""The shared pose head (models/heads.py) in every family that takes it: shapes at 64/128/224 px, frozen unused
blocks, the uvd contract (a heatmap peaked on a joint reads that joint back), option checks."""
import pytest
import torch

import models
from training import recipes
from training.config import validate_config
from core.geometry import NUM_JOINTS
from models.heads import HeatmapLifting, LiftingHead, PoseHead, attention_pool, canonical_frame, read_out
from models.heatmaps import gaussian_heatmaps
from models.losses import pose_loss

# (arch, options, stride of the heatmaps)
HEADED = [("effb0_1d", {"head": "unet"}, 4), ("effb0_1d", {"head": "fpn"}, 4),
          ("effb0_1d", {"head": "unet", "encoder_depth": 4}, 4), ("resnet34", {"head": "unet"}, 4),
          ("resnet34", {"head": "fpn"}, 4), ("ghost_lite", {"head": "lifting"}, 2),
          ("hg_mlp", {"head": "lifting", "stem_stride": 4}, 4),
          ("hourglass_attn", {"depth_head": "lifting", "stem_stride": 4}, 4),
          ("hourglass_attn", {"depth_head": "lifting", "stem_stride": 4, "fine_heatmaps": True}, 2)]


@pytest.mark.parametrize("arch, options, stride", HEADED, ids=lambda v: str(v))
def test_head_shapes_at_three_sizes(arch, options, stride):
    torch.manual_seed(0)
    model = models.create_model(arch, **options).eval()
    for size in (64, 128, 224):
        with torch.no_grad():
            uvd, aux = model(torch.randn(1, 3, size, size), return_aux=True)
        assert uvd.shape == (1, 21, 3) and torch.isfinite(uvd).all()
        assert aux["heatmaps2d"][-1].shape == (1, 21, size // stride, size // stride)
        assert ((uvd[..., :2] > -1) & (uvd[..., :2] < size)).all()   # a soft-argmax stays inside the input


@pytest.mark.parametrize("arch, options", [("effb0_1d", {"head": "unet", "encoder_depth": 4}),
                                           ("resnet34", {"head": "fpn"}), ("hg_mlp", {"head": "lifting"}),
                                           ("hourglass_attn", {"depth_head": "lifting", "stem_stride": 4,
                                                               "fine_heatmaps": True})])
def test_every_trainable_parameter_gets_a_gradient_and_unused_blocks_are_frozen(arch, options):
    """DDP needs every trainable parameter in the graph: the head's loss reaches all of them; the encoder blocks
    the head never runs (EfficientNet's 1x1 head conv, the blocks past encoder_depth) are frozen."""
    torch.manual_seed(0)
    model = models.create_model(arch, **options).train()
    size = 64
    uvd, aux = model(torch.randn(2, 3, size, size), return_aux=True)
    target = {"uvd": torch.cat([torch.rand(2, 21, 2) * size, torch.rand(2, 21, 1) - 0.5], -1),
              "visible": torch.ones(2, 21), "K": torch.eye(3).expand(2, 3, 3), "root_depth": torch.ones(2),
              "size": size}
    loss, _ = pose_loss(uvd, aux, target, {"heatmap2d": 30.0, "uv_l1": 1.0, "depth_l1": 1.0})
    loss.backward()
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert [name for name in trainable if model.get_parameter(name).grad is None] == []
    if arch == "effb0_1d":
        frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
        assert any(name.startswith("encoder._conv_head") for name in frozen)
        assert any(name.startswith(f"encoder._blocks.{model.last_block + 1}.") for name in frozen)
        assert not hasattr(model, "decoder")   # no 1D decoder built beside the head


def test_a_peaked_heatmap_reads_out_its_joint():
    """The uvd contract of the read-out: Gaussians (peak 1) at known uv on a stride-4 map of a 64 px input come
    back as those uv within 0.1 px (the sharpening is nearly unbiased: a bin is 4 px); d is one per joint."""
    torch.manual_seed(0)
    size, h = 64, 16
    uv = torch.rand(2, 21, 2) * (size - 16) + 8
    heatmaps = gaussian_heatmaps(uv, size, h, h, sigma=2.0)
    head = HeatmapLifting(channels=8).eval()
    uvd = head(heatmaps, torch.randn(2, 8, h, h), (size, size))
    assert uvd.shape == (2, 21, 3)
    assert (uvd[..., :2] - uv).abs().max() < 0.1


def test_fine_heatmaps_read_uv_at_half_the_input_and_pool_depth_features_from_the_bins_below():
    """hourglass_attn's stride-2 maps: Gaussians at known uv on a 32x32 map of a 64 px input come back as those uv
    within 0.1 px, and the depth head pools the stride-4 stem features with each 2x2 bins' summed attention."""
    torch.manual_seed(0)
    size = 64
    model = models.create_model("hourglass_attn", channels=16, num_stacks=1, hourglass_depth=2, stem_stride=4,
                                depth_head="lifting", fine_heatmaps=True).eval()
    uv = torch.rand(2, 21, 2) * (size - 16) + 8
    fine = gaussian_heatmaps(uv, size, 32, 32, sigma=2.0)
    model.fine_heatmaps.forward = lambda feats, stem_features: fine
    seen = {}
    model.depth_head.register_forward_hook(lambda module, args, out: seen.update(pooled=args[1]))
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        uvd, shallow = model(x), model.stem(x)
    assert (uvd[..., :2] - uv).abs().max() < 0.1
    coarse = read_out(fine).view(2, 21, 16, 2, 16, 2).sum((3, 5))   # (B, J, 16, 16): each 2x2 block's sum
    assert torch.allclose(seen["pooled"], attention_pool(coarse, shallow), atol=1e-5)


def test_pose_head_decodes_any_encoder_to_stride_4():
    """Features [input, stride 2, ..., 32] of made-up widths -> heatmaps at a quarter of the input."""
    channels = [3, 16, 24, 32, 48, 64]
    features = [torch.randn(1, c, 128 >> i, 128 >> i) for i, c in enumerate(channels)]
    for decoder in ("unet", "fpn"):
        uvd, heatmaps = PoseHead(channels, decoder, width=32).eval()(features)
        assert uvd.shape == (1, 21, 3) and heatmaps.shape == (1, 21, 32, 32)


@pytest.mark.parametrize("arch, options, match", [
    ("effb0_1d", {"head": "unet", "num_blocks": 3}, "num_blocks: not read by head='unet'"),
    ("effb0_1d", {"decoder_width": 32}, "decoder_width: not read by head='1d'"),
    ("effb0_1d", {"head": "fpn", "encoder_depth": 4}, "needs encoder_depth 5"),
    ("effb0_1d", {"head": "fpn", "decoder_width": 48}, "a multiple of 32"),
    ("effb0_1d", {"head": "mlp"}, "choose one of 1d, unet, fpn"),
    ("resnet34", {"head": "lifting"}, "choose one of regression, unet, fpn"),
    ("hg_mlp", {"head": "unet"}, "choose one of mlp, lifting"),
    ("ghost_lite", {"head": "unet"}, "choose one of attention, lifting")])
def test_bad_head_options_are_refused(arch, options, match):
    with pytest.raises(ValueError, match=match), torch.device("meta"):
        models.create_model(arch, **options)


def test_paper_heads_stay_the_defaults():
    assert models.create_model("effb0_1d").head_kind == "1d"
    assert models.create_model("resnet34").head_kind == "regression"
    assert models.create_model("hg_mlp").head == "mlp"
    assert models.create_model("ghost_lite").head == "attention"


@pytest.mark.parametrize("name", recipes.recipe_names())
def test_every_recipe_is_a_valid_config(name):
    """Recipe keys, loss terms and model options are checked as train.py checks a run's config (the model built on
    the meta device), so a recipe with a head option its arch does not take fails here, not in a user's run."""
    validate_config(recipes.recipe_config(name))


def test_the_gpu_recipes_at_224_px():
    """Both GPU recipes read the shared head, which beat Schneider 2020's 1D decoder at equal CPU budget."""
    heads = {"effb4_1d_plus": "unet", "resnet34_plus": "unet"}
    for name, head in heads.items():
        config = recipes.recipe_config(name)
        assert config["img_size"] == 224 and config["model"].get("head", "1d") == head
        assert config["amp"] and config["channels_last"] and config["ema_decay"] > 0 and config["warmup_epochs"] > 0
        assert config["schedule"] == "cosine" and config["optimizer"] == "adamw"


@pytest.mark.parametrize("option, value, bad, refusal", [("lifting_dropout", 0.5, 1.0, "a chance in"),
                                                        ("lifting_noise", 0.1, -0.1, "a standard deviation")])
def test_lifting_regularisers_act_in_training_only_and_keep_the_checkpoint_names(option, value, bad, refusal):
    options = {"channels": 16, "num_stacks": 1, "hourglass_depth": 2, "stem_stride": 4, "depth_head": "lifting"}
    torch.manual_seed(0)
    plain = models.create_model("hourglass_attn", **options)
    regularised = models.create_model("hourglass_attn", **{option: value}, **options)
    assert regularised.state_dict().keys() == plain.state_dict().keys()  # old checkpoints load into either
    regularised.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 32, 32)
    regularised.train()
    first, second = regularised(x), regularised(x)
    torch.testing.assert_close(first[..., :2], second[..., :2])  # u, v do not pass through the lifting MLP
    assert not torch.allclose(first[..., 2], second[..., 2])     # depths do, and differ between draws
    plain.load_state_dict(regularised.state_dict())              # the batch norms' statistics of those calls
    plain.eval(), regularised.eval()
    torch.testing.assert_close(regularised(x), plain(x))         # at prediction time nothing is dropped or added
    with pytest.raises(ValueError, match=refusal), torch.device("meta"):
        models.create_model("hourglass_attn", **{option: bad}, **options)
    with pytest.raises(ValueError, match="only depth_head='lifting'"), torch.device("meta"):
        models.create_model("hourglass_attn", **{option: value}, **{**options, "depth_head": "attention"})


@pytest.mark.parametrize("pixels", [1.0, 50.0])
def test_lifting_noise_is_measured_in_hand_radii_whatever_the_hand_size_in_pixels(pixels):
    torch.manual_seed(0)
    head = LiftingHead(channels=8, noise=0.1).train()
    seen = []
    head.mlp.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    uv = pixels * torch.randn(256, NUM_JOINTS, 2)
    head(uv, torch.rand(256, NUM_JOINTS, 8))
    pose = seen[0].view(256, NUM_JOINTS, -1)[..., :2]                  # (B, J, 2) the canonical pose the MLP read
    offset = pose - canonical_frame(uv)[0]
    assert abs(offset.std().item() - 0.1) < 0.005                      # 0.1 hand radii, at 1 px or 50 px a radius
    head.eval(), seen.clear()
    head(uv, torch.rand(256, NUM_JOINTS, 8))
    torch.testing.assert_close(seen[0].view(256, NUM_JOINTS, -1)[..., :2], canonical_frame(uv)[0])
