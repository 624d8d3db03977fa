"""The ``tilted_views`` loss term: each training hand turned out of the image plane and read by the lifting network
from its 2D pose alone. The views must be true views of the same hand (rigid turns about the root, about axes in
the image plane, of the asked spread), and the term must train the lifting network and refuse archs without one."""
import math

import pytest
import torch

import models
from core.geometry import NUM_JOINTS, ROOT_JOINT, uvd_to_xyz, xyz_to_uvd
from core.common import UserError
from models.heads import LiftingHead, tilted_views
from models.losses import pose_loss, split_weights
from tests.hands import synthetic_hands
from training.step import lifting_network

def hands(n, seed=0):
    """(uvd (n, J, 3), K (n, 3, 3), root depth (n,)): the synthetic generator's hands as a 64 px input sees them."""
    xyz, Ks = (torch.as_tensor(a, dtype=torch.float32) for a in synthetic_hands(n, seed))
    return xyz_to_uvd(xyz, Ks), Ks, xyz[:, ROOT_JOINT, 2]


def camera_joints(uvd, Ks, root_depth):
    xyz = uvd_to_xyz(uvd, Ks, root_depth)
    return xyz - xyz[:, ROOT_JOINT:ROOT_JOINT + 1]


def test_an_untilted_view_is_the_hand_itself():
    uvd, Ks, root = hands(8)
    torch.testing.assert_close(tilted_views(uvd, Ks, root, 3, 0.0), uvd.repeat_interleave(3, 0), atol=1e-4, rtol=0)


def test_views_are_rigid_turns_about_the_root_about_axes_in_the_image_plane_of_the_asked_spread():
    torch.manual_seed(0)
    uvd, Ks, root = hands(500)
    views = 4
    turned = tilted_views(uvd, Ks, root, views, 25.0)                           # (2000, J, 3)
    Ks4, root4 = Ks.repeat_interleave(views, 0), root.repeat_interleave(views, 0)
    before, after = camera_joints(uvd.repeat_interleave(views, 0), Ks4, root4), camera_joints(turned, Ks4, root4)
    # the root stays where it was, in the image and in depth
    torch.testing.assert_close(turned[:, ROOT_JOINT], uvd.repeat_interleave(views, 0)[:, ROOT_JOINT], atol=1e-3,
                               rtol=0)
    # each view is one rotation of the whole hand: Kabsch fits it exactly
    u, _, vt = torch.linalg.svd(before.transpose(1, 2) @ after)
    rotation = (u @ vt).transpose(1, 2)                                          # after = before @ rotation^T
    torch.testing.assert_close(before @ rotation.transpose(1, 2), after, atol=1e-5, rtol=0)
    angle = torch.acos(((rotation.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1))
    axis = torch.stack([rotation[:, 2, 1] - rotation[:, 1, 2], rotation[:, 0, 2] - rotation[:, 2, 0],
                        rotation[:, 1, 0] - rotation[:, 0, 1]], -1)
    big = angle > math.radians(5)
    assert (axis[big, 2].abs() / axis[big].norm(dim=-1)).max() < 1e-3       # no turn in the image plane
    # |angle| of a Gaussian of sd 25 degrees: its RMS is 25 degrees
    assert abs(math.degrees(angle.pow(2).mean().sqrt().item()) - 25.0) < 1.5
    assert (turned[..., 2] - uvd.repeat_interleave(views, 0)[..., 2]).abs().mean() > 0.05  # depths change


def test_the_lifting_network_reads_a_view_as_a_pose_with_all_zero_features():
    torch.manual_seed(0)
    head = LiftingHead(channels=8).eval()
    uv = 30 * torch.randn(5, NUM_JOINTS, 2)
    torch.testing.assert_close(head.depth_without_image(uv), head(uv, torch.zeros(5, NUM_JOINTS, 8))[1])


def weights(term_weight=1.0, **options):
    return {"heatmap2d": 1.0, "depth_l1": 1.0, "tilted_views": term_weight, **options}


def test_the_term_trains_the_lifting_network_only():
    torch.manual_seed(0)
    model = models.create_model("hourglass_attn", channels=16, num_stacks=1, hourglass_depth=2, stem_stride=4,
                                depth_head="lifting").train()
    uvd_true, Ks, root = hands(4)
    uvd, aux = model(torch.rand(4, 3, 64, 64), return_aux=True)
    target = {"uvd": uvd_true, "visible": torch.ones(4, NUM_JOINTS), "K": Ks, "root_depth": root, "size": 64}
    total, parts = pose_loss(uvd, aux, target, {"tilted_views": 1.0}, lifting=lifting_network(model))
    total.backward()
    assert parts["tilted_views"] > 0
    assert model.depth_head.out.weight.grad.abs().sum() > 0
    assert model.depth_head.reduce.bias.grad.abs().sum() > 0                     # the features' all-zero value
    assert model.depth_head.reduce.weight.grad is None or not model.depth_head.reduce.weight.grad.any()
    assert all(p.grad is None or not p.grad.any() for p in model.stem.parameters())  # not the image side


def test_the_term_refuses_an_arch_without_a_lifting_network_and_bad_options():
    model = models.create_model("hourglass_attn", channels=16, num_stacks=1, hourglass_depth=2, stem_stride=4)
    assert lifting_network(model) is None                                        # the paper's attention depth
    uvd_true, Ks, root = hands(2)
    uvd, aux = model(torch.rand(2, 3, 64, 64), return_aux=True)
    target = {"uvd": uvd_true, "visible": torch.ones(2, NUM_JOINTS), "K": Ks, "root_depth": root, "size": 64}
    with pytest.raises(UserError, match="'tilted_views' needs a lifting network"):
        pose_loss(uvd, aux, target, weights(), lifting=None)
    for option, bad in (("views", 0), ("views", 2.5), ("view_tilt_deg", -1.0)):
        with pytest.raises(UserError, match=option):
            split_weights(weights(**{option: bad}))
