import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import augment as augment_script
from core import geometry
from core.common import PROJECT_ROOT, UserError
from data import augment
from data.dataset import HandDataset
from data.readers import load_split
from tests.markers import assert_on_marks

SIZE = 128


@pytest.fixture(scope="module")
def batch(marker_set_12):
    """All 12 marker samples as one batch dict at SIZE px."""
    dataset = HandDataset(load_split(marker_set_12, "train"), SIZE)
    samples = [dataset[i] for i in range(len(dataset))]
    return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}


def run_preview(root, out, augs, seed=0, n=8, extra=(), subprocess_cli=False):
    args = ["--preview", "--data-root", str(root), "--n", str(n), "--seed", str(seed), "--augs", augs,
            "--img-size", str(SIZE), "--out", str(out), *extra]
    if subprocess_cli:
        done = subprocess.run([sys.executable, "augment.py", *args], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    else:
        augment_script.main(args)
    assert (out / "preview.png").is_file()
    return dict(np.load(out / "preview.npz"))


@pytest.fixture(scope="module")
def previews(marker_set_12, tmp_path_factory):
    """Preview outputs of the same seed for several --augs, from augment.py's main in this process."""
    out = tmp_path_factory.mktemp("previews")
    sets = ["none", "rotate", "rotate,scale,translate", "background", "flip"]
    return {augs: run_preview(marker_set_12, out / augs.replace(",", "_"), augs, seed=3) for augs in sets}


@pytest.mark.slow
def test_the_command_line_writes_what_main_writes_in_this_process(previews, marker_set_12, tmp_path):
    """augment.py --preview run as a user runs it: the same files as its main in this process."""
    augs = "rotate,scale,translate"
    written = run_preview(marker_set_12, tmp_path, augs, seed=3, subprocess_cli=True)
    assert sorted(written) == sorted(previews[augs])
    for key, value in written.items():
        np.testing.assert_array_equal(value, previews[augs][key], err_msg=key)


@pytest.mark.parametrize("augs", ["none", "rotate", "rotate,scale,translate"])
def test_preview_labels_sit_on_the_marks(previews, augs):
    result = previews[augs]
    assert result["images"].dtype == np.uint8 and result["images"].shape == (8, SIZE, SIZE, 3)
    assert result["uv"].shape == (8, 21, 2)
    assert_on_marks(result["images"], result["uv"])


def test_same_seed_picks_the_same_samples_whatever_augs(previews, marker_set_12, tmp_path):
    for result in previews.values():
        np.testing.assert_array_equal(result["idx"], previews["none"]["idx"])
    other = run_preview(marker_set_12, tmp_path, "none", seed=4)
    assert not np.array_equal(other["idx"], previews["none"]["idx"])


def test_rotation_moves_pixels_and_labels(previews):
    assert np.abs(previews["rotate"]["uv"] - previews["none"]["uv"]).max() > 5


def test_background_swap_keeps_hand_and_labels(previews):
    plain, swapped = previews["none"], previews["background"]
    hand = plain["mask"].astype(bool)
    np.testing.assert_array_equal(swapped["images"][hand], plain["images"][hand])
    np.testing.assert_array_equal(swapped["uv"], plain["uv"])
    changed = (swapped["images"] != plain["images"]).any(-1)
    for i in range(len(hand)):  # every previewed image shows a swap
        assert changed[i][~hand[i]].mean() >= 0.9


def test_flip_puts_labels_on_the_mirrored_marks(previews):
    plain, flipped = previews["none"], previews["flip"]
    assert flipped["flipped"].all()
    np.testing.assert_allclose(flipped["uv"][..., 0], SIZE - 1 - plain["uv"][..., 0], atol=1e-4)
    np.testing.assert_allclose(flipped["uv"][..., 1], plain["uv"][..., 1], atol=1e-4)
    np.testing.assert_array_equal(flipped["images"], plain["images"][:, :, ::-1])
    assert_on_marks(flipped["images"], flipped["uv"])


def test_api_geometry_keeps_labels_on_marks_and_moves_K(batch):
    options = {"scale": {"range": (0.8, 1.2)}, "translate": {"max_frac": 0.1}, "flip": {"p": 0.5}}
    augmenter = augment.Augmenter("flip,scale,rotate,translate", options, SIZE, "cpu", seed=0)
    out = augmenter(batch)
    assert out["image"].dtype == torch.float32 and out["image"].shape == batch["image"].shape
    assert 0 < out["flipped"].sum() < len(out["flipped"])
    images = (out["image"] * 255).round().byte().permute(0, 2, 3, 1).numpy()
    assert_on_marks(images, out["uvd"][..., :2].numpy())
    torch.testing.assert_close(out["uvd"][..., 2], batch["uvd"][..., 2])  # d unchanged
    # K moved with the image: the original xyz projects onto the moved uv
    torch.testing.assert_close(geometry.project(batch["xyz"].double(), out["K"].double()).float(),
                               out["uvd"][..., :2], atol=1e-3, rtol=0)
    torch.testing.assert_close(geometry.apply_affine(out["affine"], batch["uvd"][..., :2]), out["uvd"][..., :2])


def test_warp_images_is_the_codec_convention(batch):
    angle = torch.tensor([30.0, -75.0, 140.0])
    affine = geometry.rotation_affine(angle, SIZE, 1.1, torch.tensor([[3.0, -2.0]]))
    warped = geometry.warp_images(batch["image"][:3], affine)
    images = (warped * 255).round().byte().permute(0, 2, 3, 1).numpy()
    assert_on_marks(images, geometry.apply_affine(affine, batch["uvd"][:3, :, :2]).numpy(), min_joints=20)


def test_occlusion_covers_the_configured_fraction_and_keeps_labels(batch):
    options = {"occlude": {"p": 1.0, "cover": (0.3, 0.3), "hand_colour": 0.0}}
    out = augment.Augmenter("occlude", options, SIZE, "cpu", seed=1)(batch)
    torch.testing.assert_close(out["uvd"], batch["uvd"])
    hand = batch["mask"].bool()
    changed = (out["image"] != batch["image"].float() / 255).any(1) & hand
    measured = changed.flatten(1).sum(1) / hand.flatten(1).sum(1)
    assert (measured - out["occluded"]).abs().max() < 0.02  # the reported fraction is what was drawn
    assert abs(measured.mean() - 0.3) < 0.05 and (measured - 0.3).abs().max() < 0.15, measured
    # without a mask the hand is approximated by discs around the joints
    no_mask = dict(batch, has_mask=torch.zeros_like(batch["has_mask"]), mask=torch.zeros_like(batch["mask"]))
    covered = augment.Augmenter("occlude", options, SIZE, "cpu", seed=1)(no_mask)["occluded"]
    assert abs(covered.mean() - 0.3) < 0.05


def test_background_only_where_a_mask_exists(batch):
    has_mask = torch.arange(len(batch["has_mask"])) % 2 == 0
    out = augment.Augmenter("background", {"background": {"p": 1.0}}, SIZE, "cpu", seed=0)(
        dict(batch, has_mask=has_mask))
    unchanged = (out["image"] == batch["image"].float() / 255).flatten(1).all(1)
    assert torch.equal(unchanged, ~has_mask)


def test_background_bank_from_a_folder(batch, tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (90, 150, 3), dtype=np.uint8)).save(tmp_path / f"bg{i}.png")
    augmenter = augment.Augmenter("background", {"background": {"p": 1.0}}, SIZE, "cpu", backgrounds=tmp_path)
    assert augmenter.bank.shape == (3, 3, SIZE, SIZE) and augmenter.bank.dtype == torch.uint8
    out = augmenter(batch)
    bank = augmenter.bank.float() / 255
    candidates = torch.cat([bank, bank.flip(-1)])                                  # (6, 3, S, S)
    outside = ~batch["mask"].bool()[:, None]
    for image, keep in zip(out["image"], outside):
        assert any(torch.equal(image[keep.expand(3, -1, -1)], c[keep.expand(3, -1, -1)]) for c in candidates)


def test_bad_background_folder_is_one_user_error(tmp_path):
    with pytest.raises(UserError, match="not a folder"):
        augment.Augmenter("background", None, SIZE, "cpu", backgrounds=tmp_path / "missing")
    with pytest.raises(UserError, match="no images"):
        augment.Augmenter("background", None, SIZE, "cpu", backgrounds=tmp_path)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="broken.jpg"):
        augment.Augmenter("background", None, SIZE, "cpu", backgrounds=tmp_path)


def test_parameters_differ_per_sample_and_follow_the_generator(batch):
    same = {key: value[:1].expand(6, *value.shape[1:]) for key, value in batch.items()}
    augmenter = augment.Augmenter(augment.AUG_NAMES, None, SIZE, "cpu")
    out = augmenter(same, torch.Generator().manual_seed(5))
    assert len({tuple(a.flatten().tolist()) for a in out["affine"]}) == 6
    again = augmenter(same, torch.Generator().manual_seed(5))
    assert torch.equal(out["image"], again["image"]) and torch.equal(out["affine"], again["affine"])


def test_p_zero_and_none_are_identity_with_float_images(batch):
    zero = {name: {"p": 0.0} for name in augment.AUG_NAMES}
    for augmenter in (augment.Augmenter(augment.AUG_NAMES, zero, SIZE, "cpu"),
                      augment.Augmenter("none", None, SIZE, "cpu")):
        out = augmenter(batch)
        assert out["image"].dtype == torch.float32
        assert torch.equal(out["image"], batch["image"].float() / 255)
        assert torch.equal(out["uvd"], batch["uvd"]) and torch.equal(out["mask"], batch["mask"])
        assert torch.equal(out["affine"], torch.eye(2, 3).expand(len(batch["uvd"]), 2, 3))
        assert torch.equal(out["id"], batch["id"])  # other keys pass through


def test_visible_is_false_exactly_for_joints_outside_the_frame(batch):
    options = {"translate": {"max_frac": 0.45}, "scale": {"range": (1.2, 1.6)}}
    out = augment.Augmenter("scale,rotate,translate", options, SIZE, "cpu", seed=2)(batch)
    uv = out["uvd"][..., :2]
    inside = ((uv >= -0.5) & (uv <= SIZE - 0.5)).all(-1)
    assert torch.equal(out["visible"], inside) and 0 < (~inside).sum() < inside.numel()


def test_photometric_changes_pixels_not_labels(batch):
    out = augment.Augmenter("color,blur,noise", {n: {"p": 1.0} for n in ("color", "blur", "noise")},
                            SIZE, "cpu", seed=0)(batch)
    assert not torch.equal(out["image"], batch["image"].float() / 255)
    assert out["image"].min() >= 0 and out["image"].max() <= 1
    assert torch.equal(out["uvd"], batch["uvd"])


def test_names_and_options_are_checked():
    assert augment.parse_augs("none") == () and augment.parse_augs("") == ()
    assert augment.parse_augs("background, rotate") == ("rotate", "background")
    with pytest.raises(UserError, match="valid names: flip, scale, rotate"):
        augment.parse_augs("rotate,spin")
    assert augment.resolve_options({"rotate": {"max_deg": 30}})["rotate"] == {"p": 1.0, "max_deg": 30.0}
    assert augment.resolve_options(None) == augment.AUG_DEFAULTS
    for bad, match in [({"rotate": {"max_deg": "30"}}, "rotate.max_deg"), ({"spin": {}}, "spin"),
                       ({"rotate": {"angle": 3}}, "rotate.angle"), ({"occlude": {"cover": 0.3}}, "occlude.cover"),
                       ({"flip": {"p": 1.5}}, "flip.p"), ({"rotate": 30}, "rotate")]:
        with pytest.raises(UserError, match=match):
            augment.resolve_options(bad)


@pytest.mark.slow
def test_cli_prints_one_line_errors(marker_set_12, tmp_path):
    done = subprocess.run([sys.executable, "augment.py", "--preview", "--data-root", str(marker_set_12), "--augs",
                           "rotate,spin", "--out", str(tmp_path)], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "unknown augmentation 'spin'" in done.stderr and "Traceback" not in done.stderr


def test_shape_rasterisers_match_matplotlib():
    from matplotlib.patches import Ellipse, Polygon
    rng, size = np.random.default_rng(0), 64
    pixels = np.stack(np.meshgrid(np.arange(size), np.arange(size), indexing="xy"), -1).reshape(-1, 2)
    centre = rng.uniform(20, 44, (4, 2))
    phi = np.sort(rng.uniform(0, 2 * np.pi, (4, 5)), 1)
    vertices = centre[:, None] + rng.uniform(8, 20, (4, 1, 1)) * np.stack([np.cos(phi), np.sin(phi)], -1)
    a, b, theta = rng.uniform(5, 20, 4), rng.uniform(5, 20, 4), rng.uniform(0, np.pi, 4)
    t = lambda x: torch.tensor(np.asarray(x), dtype=torch.float32)
    polygons = augment.polygon_masks(t(vertices), size).numpy()
    ellipses = augment.ellipse_masks(t(centre), t(a), t(b), t(theta), size).numpy()
    for i in range(4):
        references = [(polygons[i], Polygon(vertices[i])),
                      (ellipses[i], Ellipse(centre[i], 2 * a[i], 2 * b[i], angle=np.degrees(theta[i])))]
        for ours, patch in references:
            reference = patch.contains_points(pixels).reshape(size, size)
            assert reference.sum() > 50 and (ours != reference).sum() <= 0.02 * reference.sum()
