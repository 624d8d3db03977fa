"""Tests specific to the archs of Liu 2022, Liu 2018 and He 2021: ghost_lite, hourglass_attn, hg_mlp."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from core.common import UserError
from models import create_model
from models.flops import count_gflops
from models.ghost import SeparableSelfAttention
from models.heatmaps import gaussian_heatmaps, soft_argmax_2d, spatial_softmax
from models.heads import LiftingHead, canonical_frame, from_canonical, read_out
from models.losses import pose_loss

ARCHS = ("ghost_lite", "hourglass_attn", "hg_mlp")
HEATMAP_STAGES = {"ghost_lite": 1, "hourglass_attn": 2, "hg_mlp": 2}


@pytest.fixture(scope="module")
def default_models():
    torch.manual_seed(0)
    return {name: create_model(name).eval() for name in ARCHS}


def make_target(batch, size, generator):
    """A pose_loss target: joints inside the input, d in [-0.5, 0.5], a camera that fits the input."""
    uv = torch.rand(batch, 21, 2, generator=generator) * (0.75 * size) + size / 8
    d = torch.rand(batch, 21, 1, generator=generator) - 0.5
    focal = 2.5 * size
    K = torch.tensor([[focal, 0.0, size / 2], [0.0, focal, size / 2], [0.0, 0.0, 1.0]]).expand(batch, 3, 3)
    return {"uvd": torch.cat([uv, d], -1), "visible": torch.ones(batch, 21), "K": K,
            "root_depth": torch.full((batch,), 0.6), "size": size}


# --- the contract at the default input size ------------------------------------------------------------

@pytest.mark.parametrize("name", ARCHS)
def test_heatmap_aux_shapes_at_128px(default_models, name):
    """The uvd contract of every model is tests/test_models.py's; here the 2D heatmaps each stage exposes."""
    with torch.no_grad():
        _, aux = default_models[name](torch.randn(2, 3, 128, 128), return_aux=True)
    heatmaps = aux["heatmaps2d"]
    assert isinstance(heatmaps, list) and len(heatmaps) == HEATMAP_STAGES[name]
    for maps in heatmaps:
        assert maps.shape == (2, 21, 64, 64) and torch.isfinite(maps).all()


def test_ghost_lite_heatmaps_are_com1_probabilities(default_models):
    with torch.no_grad():
        _, aux = default_models["ghost_lite"](torch.randn(1, 3, 128, 128), return_aux=True)
    sums = aux["heatmaps2d"][0].sum((-2, -1))
    torch.testing.assert_close(sums, torch.ones_like(sums))


def test_ghost_lite_is_paper_scale(default_models):
    model = default_models["ghost_lite"]
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert params < 1_000_000
    assert 100_000 < params < 300_000  # the paper: 0.18 M
    assert count_gflops(model, 128) < 1.0  # the paper: 0.27 G; this count is 2 FLOPs per MAC


def test_count_gflops_counts_two_flops_per_mac():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    macs = 16 * 16 * 8 * 3 * 9
    assert count_gflops(conv, 16) == pytest.approx(2 * macs / 1e9)


# --- ghost_lite's parts ---------------------------------------------------------------------------------

def test_ghost_lite_beta_is_learned_per_joint():
    torch.manual_seed(0)
    model = create_model("ghost_lite")
    assert any(param is model.beta for param in model.parameters())
    assert model.beta.shape == (21,)
    uvd = model(torch.randn(2, 3, 64, 64))
    uvd[..., 2].square().sum().backward()  # beta only reaches the depth, through the fused attention
    assert model.beta.grad is not None and (model.beta.grad.abs() > 0).all()


def test_separable_attention_is_permutation_equivariant():
    torch.manual_seed(0)
    attention = SeparableSelfAttention(16).eval()
    tokens = torch.randn(2, 50, 16)
    order = torch.randperm(50)
    with torch.no_grad():
        torch.testing.assert_close(attention(tokens[:, order]), attention(tokens)[:, order])


def test_separable_attention_cost_is_linear_in_tokens():
    attention = SeparableSelfAttention(16).eval()

    def flops(num_tokens):
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            out = attention(torch.randn(1, num_tokens, 16))
        assert out.shape == (1, num_tokens, 16) and torch.isfinite(out).all()
        return counter.get_total_flops()

    # an N x N attention matrix would make the count grow 16x from 1024 to 4096 tokens
    assert flops(4096) == 4 * flops(1024)


# --- read-outs ----------------------------------------------------------------------------------------

def test_soft_argmax_returns_the_input_pixel_of_a_peaked_bin():
    logits = torch.full((1, 2, 64, 32), -1e4)
    logits[0, 0, 10, 20] = 0.0   # row 10, column 20 of a 64 x 32 map over a 128 (high) x 64 (wide) input
    logits[0, 1, 63, 0] = 0.0
    uv = soft_argmax_2d(spatial_softmax(logits), (128, 64))
    # a map bin is 2 x 2 input pixels; bin (10, 20) spans pixels u 40-41, v 20-21, centre (40.5, 20.5)
    torch.testing.assert_close(uv[0], torch.tensor([[40.5, 20.5], [0.5, 126.5]]))


@pytest.mark.parametrize("peak", [1.0, 0.4])
def test_hourglass_attn_readout_finds_gaussian_targets(default_models, peak):
    """The heatmaps are trained towards the loss's Gaussians (peak 1); the read-out must land on their centre
    at sub-pixel positions, for tall or low peaks, over a low noisy background."""
    generator = torch.Generator().manual_seed(0)
    uv = torch.rand(2, 21, 2, generator=generator) * 100 + 14
    noise = 0.02 * peak * torch.rand(2, 21, 64, 64, generator=generator)
    maps = peak * gaussian_heatmaps(uv, 128, 64, 64, sigma=2.0) + noise
    found = soft_argmax_2d(read_out(maps), (128, 128))
    assert (found - uv).abs().max() < 0.2  # input pixels; a map bin is 2 pixels


# --- hourglass_attn's options for a CPU: quarter-resolution stem, lifting head -----------------------------

CPU_OPTIONS = {"channels": 32, "num_stacks": 1, "hourglass_depth": 3, "stem_stride": 4, "depth_head": "lifting"}


def test_quarter_resolution_stem_gives_quarter_maps_and_the_uvd_contract():
    model = create_model("hourglass_attn", **CPU_OPTIONS).eval()
    with torch.no_grad():
        uvd, aux = model(torch.randn(2, 3, 64, 64), return_aux=True)
    assert uvd.shape == (2, 21, 3) and torch.isfinite(uvd).all()
    assert [maps.shape for maps in aux["heatmaps2d"]] == [(2, 21, 16, 16)]


def test_canonical_frame_is_free_of_place_size_and_turn_and_round_trips():
    """The same pose moved, scaled and turned in the image has one canonical form (so the lifting network sees
    only the shape), and from_canonical puts it back where it was."""
    torch.manual_seed(0)
    uv = torch.rand(1, 21, 2) * 40
    angle = torch.tensor(0.7)
    turn = torch.stack([torch.stack([angle.cos(), -angle.sin()]), torch.stack([angle.sin(), angle.cos()])])
    moved = (uv @ turn.T) * 1.7 + torch.tensor([5.0, -3.0])
    (a, _, _), (b, scale, t) = canonical_frame(uv), canonical_frame(moved)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert a[0, 9].abs().max() < 1e-6 and a[0, 0, 0].abs() < 1e-5 and a[0, 0, 1] > 0  # root at 0, wrist below
    torch.testing.assert_close(from_canonical(b, moved, scale, t), moved, atol=1e-4, rtol=0)


def test_lifting_head_options_are_checked():
    with pytest.raises(ValueError, match="depth_head='mlp'"):
        create_model("hourglass_attn", depth_head="mlp")
    with pytest.raises(ValueError, match="stem_stride=3"):
        create_model("hourglass_attn", stem_stride=3)
    with pytest.raises(ValueError, match="refine_uv=True"):
        create_model("hourglass_attn", refine_uv=True)


def test_lifting_head_without_refinement_keeps_the_2d_read_out():
    """refine_uv off: u, v are the heatmaps' soft-argmax exactly; on: the lifting network moves them."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    plain = create_model("hourglass_attn", **CPU_OPTIONS).eval()
    refined = create_model("hourglass_attn", **CPU_OPTIONS, refine_uv=True).eval()
    last = "depth_head.out."  # the output layer: 21 depths, or 63 values with the 2D corrections
    refined.load_state_dict({k: v for k, v in plain.state_dict().items() if not k.startswith(last)}, strict=False)
    with torch.no_grad():
        (uvd, aux), (uvd_refined, _) = plain(x, return_aux=True), refined(x, return_aux=True)
        plain_uv = soft_argmax_2d(read_out(aux["heatmaps2d"][-1]), (64, 64))
    torch.testing.assert_close(uvd[..., :2], plain_uv)
    assert (uvd_refined[..., :2] - plain_uv).abs().max() > 1e-4


def test_the_lifting_network_keeps_its_units_alive_when_its_biases_drift_negative():
    """The failure LayerNorm prevents: biases pushed far below zero (where AdamW drove them) left a ReLU MLP's
    units dead and its depth constant; normalised pre-activations keep the depth a function of the input."""
    torch.manual_seed(0)
    head = LiftingHead(channels=8).eval()
    with torch.no_grad():
        for layer in head.mlp:
            if isinstance(layer, torch.nn.Linear):
                layer.bias.fill_(-100.0)
        uv, pooled = torch.rand(4, 21, 2) * 64, torch.randn(4, 21, 8)
        _, depth = head(uv, pooled)                                                  # (4, 21, 1)
    assert depth.std(0).mean() > 1e-3


# --- learning -------------------------------------------------------------------------------------------

# The papers' losses; hourglass_attn also with its paper's optimiser (SGD, momentum 0.9, lr 0.1). The two
# hourglass archs are overfitted at width 32 to keep this file fast on a CPU.
OVERFIT = {
    "ghost_lite": ({}, {"uv_l1": 1.0, "depth_l1": 1.0}, "adam", 3e-3),
    "hourglass_attn": ({"channels": 32}, {"heatmap2d": 1.0, "depth_l1": 1.0}, "sgd", 0.1),
    "hourglass_attn_lifting": (CPU_OPTIONS, {"heatmap2d": 30.0, "uv_l1": 1.0, "depth_l1": 1.0}, "adam", 3e-3),
    "hourglass_attn_lifting_refined": ({**CPU_OPTIONS, "refine_uv": True}, {"heatmap2d": 30.0, "uv_l1": 1.0,
                                                                              "depth_l1": 1.0}, "adam", 3e-3),
    "hg_mlp": ({"channels": 32, "dropout": 0.0},
               {"heatmap2d": 0.1, "pose_l2": 1.0, "bone_cosine": 10.0}, "adam", 1e-3),  # M-cos-2
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(OVERFIT))
def test_overfits_a_small_batch(name):
    options, weights, optimiser, lr = OVERFIT[name]
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    model = create_model(name.split("_lifting")[0], **options)
    x = torch.randn(2, 3, 64, 64, generator=generator)
    target = make_target(2, 64, generator)
    if optimiser == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-5)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for step in range(30):
        uvd, aux = model(x, return_aux=True)
        loss, _ = pose_loss(uvd, aux, target, weights, progress=step / 30)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0], losses


# --- weights --------------------------------------------------------------------------------------------

def test_weights_file_round_trip_and_no_imagenet(tmp_path):
    torch.manual_seed(0)
    model = create_model("ghost_lite").eval()
    path = tmp_path / "ghost_lite.pt"
    torch.save({"model": model.state_dict()}, path)
    loaded = create_model("ghost_lite", pretrained=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    with pytest.raises(UserError, match="no ImageNet weights"):
        create_model("hourglass_attn", pretrained="imagenet")
