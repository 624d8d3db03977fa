"""Training recipes, in one visible place: CONFIG_DEFAULTS, then one recipe per name (from the seed papers).

A run's config starts from CONFIG_DEFAULTS, then the recipe (``--recipe``, by default the one named like
``--arch``), then the command line. Every key here is a known key with a type; an override of an unknown key or
of the wrong type is an error. ``milestones`` are fractions of the epochs, so a shortened run keeps the schedule's
shape (seed 000: x0.1 at epochs 100 and 140 of 145).
"""
import copy

from augment import TRAIN_DEFAULT_AUGS

CONFIG_DEFAULTS = {
    "arch": "",
    "recipe": "",
    "data_root": "",                # empty: data/freihand when it holds a dataset, else the synthetic set
    "img_size": 224,
    "batch_size": 32,
    "epochs": 100,
    "optimizer": "adam",            # adam | adamw | sgd
    "lr": 1e-4,
    "weight_decay": 0.0,
    "momentum": 0.9,                # sgd only
    "schedule": "multistep",        # multistep | cosine | onecycle | constant, stepped per optimiser step
    "milestones": [0.5, 0.75],      # fractions of the epochs where multistep multiplies the lr by gamma
    "gamma": 0.1,
    "min_lr_ratio": 0.0,            # cosine: the floor, as a fraction of lr
    "onecycle_pct": 0.3,            # onecycle: share of the steps spent rising to lr
    "warmup_epochs": 0.0,           # linear warm-up over this many epochs (a float)
    "warmup_start": 0.01,           # warm-up starts at lr * this
    "accumulate": 1,                # batches whose gradients are summed into one optimiser step
    "ema_decay": 0.0,               # EMA of the weights (timm ModelEmaV3, warm-up ramp); 0 = off
    "grad_clip": 0.0,               # max gradient norm; 0 = off
    "loss": {"coord_mse": 1.0},     # term -> weight (and options), see models/losses.py
    "augs": ",".join(TRAIN_DEFAULT_AUGS),  # augment.py names, comma-separated, or none
    "augs_final": "",               # RTMPose's stage 2: these augmentations in the last final_epochs ("" = augs)
    "final_epochs": 0,
    "aug": {},                      # overrides of augment.AUG_DEFAULTS, e.g. {"rotate": {"max_deg": 90.0}}
    "model": {},                    # builder options of the arch
    "pretrained": "auto",           # auto (imagenet on real data, none on the synthetic set) | imagenet | none | PATH
    "backgrounds": "",              # folder of background images for the background swap; empty = generated
    "device": "auto",
    "seed": 0,
    "workers": -1,                  # data-loading processes; -1 = sized to the machine
    "amp": True,                    # mixed precision on CUDA (core.precision: bf16 or fp16)
    "channels_last": True,          # NHWC memory layout (faster on CUDA and on the CPU)
    "compile": False,               # torch.compile the model
    "cache": True,                  # decode JPEGs once into a uint8 memory map (data/cache/)
    "max_train_images": 0,          # use at most this many training images (a fixed subset); 0 = all
    "max_val_images": 0,
    "short_on_cpu": True,           # on the synthetic set on a CPU, run a short check instead (train.py); the
                                    # recipes made for a CPU say false
    "folds": 0,                     # K-fold cross-validation by hand (GroupKFold); 0 = the saved 5 % hold-out
    "fold": 0,                      # the fold validated when folds > 0
    "average_top_k": 0,             # at the end, average the weights of the k best epochs (0/1 = off)
    "checkpoint_minutes": 30.0,     # also write last.pt inside an epoch this often (0 = at epoch ends only)
    "pseudo_labels": "",            # a prediction .npz of an unlabelled split: its images join training
                                    # (data/pseudo.py)
    "pseudo_weight": 1.0,           # the loss weight of a pseudo-labelled image (a labelled one weighs 1)
    "pseudo_keep": 1.0,             # the share of pseudo-labelled images kept, the surest first (an ensemble's spread)
}

_SEED000 = {"img_size": 224, "batch_size": 32, "epochs": 145, "optimizer": "adam", "lr": 1e-4,
            "schedule": "multistep", "milestones": [100 / 145, 140 / 145], "gamma": 0.1,
            "loss": {"coord_mse": 1.0}, "augs": "rotate"}
_SEED001 = {"img_size": 128, "batch_size": 64, "optimizer": "adam", "lr": 1e-4, "schedule": "cosine",
            "loss": {"coord_l1": 1.0}}
_SEED003 = {"arch": "hourglass_attn", "img_size": 128, "batch_size": 32, "epochs": 50, "optimizer": "sgd",
            "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-5, "schedule": "multistep", "milestones": [0.5, 0.75],
            "gamma": 0.1, "pretrained": "none", "augs": "rotate"}
_SEED004 = {"arch": "hg_mlp", "img_size": 128, "batch_size": 32, "epochs": 100, "optimizer": "adam", "lr": 1e-4,
            "schedule": "multistep", "milestones": [0.5, 0.75], "pretrained": "none", "augs": "rotate"}
_SEED004_BASE = {"heatmap2d": 0.1 * 21 * 64 * 64, "pose_l2": 1.0 * 0.15 ** 2}

# ours: what made the CPU recipe learn the fingers from random weights (README, "Learning on a CPU"), for any arch
# with 2D heatmaps: 64 px, batch 16, AdamW with warm-up + cosine per step, EMA, the 3 best epochs averaged, the
# heatmap term weighted 30 beside the 2D and depth L1 terms, rotations within +-30 degrees (TTA spans the same)
_CPU_HEAD = {"img_size": 64, "batch_size": 16, "epochs": 30, "optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05,
             "schedule": "cosine", "min_lr_ratio": 0.02, "warmup_epochs": 1.0, "ema_decay": 0.999,
             "average_top_k": 3, "loss": {"heatmap2d": 30.0, "uv_l1": 1.0, "depth_l1": 1.0}, "augs": "rotate",
             "aug": {"rotate": {"max_deg": 30.0}}, "pretrained": "none", "short_on_cpu": False}

# ours, for a GPU: _CPU_HEAD's loss and schedule at 224 px on real data (ImageNet weights where the arch has them),
# the seed's full rotations (TTA spans them) and its other augmentations, batch 64
_GPU_HEAD = {**_CPU_HEAD, "img_size": 224, "batch_size": 64, "epochs": 100, "lr": 1e-3, "warmup_epochs": 2.0,
             "min_lr_ratio": 0.01, "ema_decay": 0.9998, "augs": "background,rotate,occlude", "aug": {},
             "pretrained": "auto", "short_on_cpu": True}

RECIPES = {
    # seed 000: EfficientNet encoder + 1D-heatmap decoder, MSE, Adam 1e-4, MultiStepLR, rotations up to 180 deg
    "effb4_1d": {**_SEED000, "arch": "effb4_1d", "model": {"num_blocks": 4, "channels": 128}},
    "effb0_1d": {**_SEED000, "arch": "effb0_1d", "model": {"num_blocks": 4, "channels": 128}},
    # ours: effb0_1d from random weights in minutes (the synthetic set on a CPU): 10x the lr, small batches, no
    # stochastic depth, and the 1D heatmaps also pulled towards Gaussians at the targets (js1d), which finds the
    # hand far sooner than the coordinates alone
    "effb0_1d_scratch": {**_SEED000, "arch": "effb0_1d",
                         "model": {"num_blocks": 4, "channels": 128, "drop_connect": 0.0},
                         "pretrained": "none", "batch_size": 8, "lr": 1e-3, "loss": {"coord_mse": 1.0, "js1d": 1.0},
                         "augs": "none"},
    # ours, the CPU recipe: what learns the fingers fastest from random weights on the synthetic set on a 2-core
    # CPU (README, "Learning on a CPU"): seed 003's hourglass cut to one 64-channel stack of depth 3 run at a
    # quarter of a 64 px input (faster than the seed-000 net on a CPU), depth from a lifting network over
    # the canonical 2D pose and the heatmap-pooled features; the heatmap term weighted 30 (it, not the
    # coordinates, teaches where the fingers are), rotations within +-30 degrees (+-180 costs more than it
    # teaches in this budget; TTA spreads over the trained range), AdamW, warm-up + cosine per step, EMA,
    # the 3 best epochs averaged.
    "synthetic_cpu": {**_SEED003, "img_size": 64, "batch_size": 16, "epochs": 60, "optimizer": "adamw", "lr": 3e-3,
                      "weight_decay": 0.05, "schedule": "cosine", "min_lr_ratio": 0.02, "warmup_epochs": 1.0,
                      "ema_decay": 0.999, "average_top_k": 3,
                      "model": {"channels": 64, "num_stacks": 1, "hourglass_depth": 3, "stem_stride": 4,
                                "depth_head": "lifting"},
                      "loss": {"heatmap2d": 30.0, "uv_l1": 1.0, "depth_l1": 1.0}, "augs": "rotate",
                      "aug": {"rotate": {"max_deg": 30.0}}, "short_on_cpu": False},
    # ours, the CPU recipe of seed 000's family: the effb0 encoder with the shared head (models/heads.py), the
    # settings that made the hourglass learn (_CPU_HEAD); the encoder stops at stride 16 (at 64 px the stride-32
    # stage sees a 2x2 map yet holds most of the weights: without it a step is much cheaper and learns as
    # much), and twice _CPU_HEAD's lr; its 5 M weights overfit the synthetic set's 1900 poses sooner than the
    # hourglass, so the view also scales and shifts and stochastic depth 0.1 regularises; it still underfits more
    # than it overfits, so a decoder of width 48 (a step 9 % cheaper) pays for 44 epochs (README, "Learning on a CPU")
    "effb0_cpu": {**_CPU_HEAD, "arch": "effb0_1d", "epochs": 44, "lr": 4e-3, "augs": "scale,rotate,translate",
                  "model": {"head": "unet", "drop_connect": 0.1, "encoder_depth": 4, "decoder_width": 48}},
    # ours, the same head on the other encoders and hourglasses, for the table of every arch at one CPU budget
    # (README); their epochs are set by that budget
    "effb4_cpu": {**_CPU_HEAD, "arch": "effb4_1d", "lr": 4e-3,
                  "model": {"head": "unet", "drop_connect": 0.0, "encoder_depth": 4}},  # effb0_cpu's depth, lr
    "resnet34_cpu": {**_CPU_HEAD, "arch": "resnet34", "model": {"head": "unet"}},
    "resnet101_cpu": {**_CPU_HEAD, "arch": "resnet101", "model": {"head": "unet"}},
    "res50x2_res34_cpu": {**_CPU_HEAD, "arch": "res50x2_res34", "loss": {"coord_l1": 1.0}},  # no heatmaps to use
    "ghost_lite_cpu": {**_CPU_HEAD, "arch": "ghost_lite", "model": {"head": "lifting"}},
    "hg_mlp_cpu": {**_CPU_HEAD, "arch": "hg_mlp", "model": {"head": "lifting", "channels": 64, "num_stacks": 1,
                                                            "hourglass_depth": 3, "stem_stride": 4}},
    # ours, seed 000's arch with its paper head on a CPU (README): effb0_1d at 64 px reading the stride-16 features
    # (a 4x4 map, not 2x2) with UNet-style skips into the xy branch and I2L-MeshNet's pooled depth read-out; batch
    # 16, AdamW, warm-up + cosine per step, EMA, MSE + the SimCC KL term, rotations, the 3 best epochs averaged
    "effb0_1d_cpu": {**_SEED000, "arch": "effb0_1d", "img_size": 64, "batch_size": 16, "epochs": 25,
                  "optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05, "schedule": "cosine",
                  "min_lr_ratio": 0.02, "warmup_epochs": 1.0, "ema_decay": 0.999, "average_top_k": 3,
                  "model": {"num_blocks": 3, "channels": 128, "drop_connect": 0.0, "z_readout": "pooled",
                            "encoder_depth": 4, "skips": True},
                  "loss": {"coord_mse": 1.0, "simcc_kl": 0.1}, "augs": "rotate", "pretrained": "none",
                  "short_on_cpu": False},
    # ours, for a GPU: seed 000's EfficientNet-B4 at 224 px under the shared head, which beat the 1D decoder with
    # its CPU options at equal CPU time (README, "Learning on a CPU" and the arch table): stride-4 heatmaps, the
    # peak read-out, lifting depth; the whole encoder (at 224 px its stride-32 stage sees 7x7), stochastic depth
    # as the paper; the _GPU_HEAD schedule (AdamW, warm-up, cosine per step, EMA, the 3 best epochs averaged),
    # bf16 AMP and channels_last (the defaults), ImageNet weights on real data
    "effb4_1d_plus": {**_GPU_HEAD, "arch": "effb4_1d", "model": {"head": "unet"}},
    # ours, for a GPU: seed 001's ResNet34 as a feature extractor under the shared head (stride-4 heatmaps: 2D
    # accuracy was the lever of the CPU recipe; the direct regression of 63 values stays above the constant shape
    # on the CPU), the _GPU_HEAD schedule, ImageNet weights on real data (--pretrained imagenet)
    "resnet34_plus": {**_GPU_HEAD, "arch": "resnet34", "model": {"head": "unet"}},
    # seed 001: direct regression, 128 px, L1, Adam, cosine annealing; ResNet101 was best without clutter
    "resnet34": {**_SEED001, "arch": "resnet34", "epochs": 150, "augs": "background,rotate,occlude"},
    "resnet101": {**_SEED001, "arch": "resnet101", "epochs": 200, "augs": "background,rotate"},
    "res50x2_res34": {**_SEED001, "arch": "res50x2_res34", "epochs": 240, "augs": "background,rotate,occlude"},
    # seed 002: L1 on 2D + L1 on depth; the seed names no optimiser or schedule (ours: Adam 1e-3, cosine)
    "ghost_lite": {"arch": "ghost_lite", "img_size": 128, "batch_size": 64, "epochs": 100, "optimizer": "adam",
                   "lr": 1e-3, "schedule": "cosine", "pretrained": "none", "loss": {"uv_l1": 1.0, "depth_l1": 1.0},
                   "augs": "background,rotate,occlude"},
    # seed 003: SGD momentum 0.9, wd 5e-5, lr 0.1 divided by 10 twice; heatmap L2 with intermediate supervision
    # + depth. On RGB the heatmaps alone barely learn their peaks at this lr, so the 2D read-out gets an L1 term;
    # the seed's own loss is the recipe hourglass_attn_seed.
    "hourglass_attn": {**_SEED003, "loss": {"heatmap2d": 1.0, "uv_l1": 1.0, "depth_l1": 1.0}},
    "hourglass_attn_seed": {**_SEED003, "loss": {"heatmap2d": 1.0, "depth_l1": 1.0}},
    # seed 004: the loss family with the seed's named settings, translated into our units: the seed sums the
    # heatmap error over 21 x 64 x 64 pixels (ours is a mean: x 86016) and measures poses in metres (ours in
    # units of 0.15 m: x 0.0225). M-asm gives no numbers: ASM at twice the pose weight, decaying linearly to 0.
    "hg_mlp": {**_SEED004, "loss": {**_SEED004_BASE, "asm": 0.045, "asm_decay": "linear"}},           # M-asm
    "hg_mlp_cos1": {**_SEED004, "loss": {**_SEED004_BASE, "bone_length": 0.0015, "bone_direction": 0.1,
                                          "bone_cosine": 10.0}},                                          # M-cos-1
    "hg_mlp_cos2": {**_SEED004, "loss": {**_SEED004_BASE, "bone_cosine": 10.0}},                         # M-cos-2
}


def recipe_names():
    return sorted(RECIPES)


def recipe_config(name):
    """CONFIG_DEFAULTS with the recipe ``name`` applied (a fresh copy; ``name`` must be a recipe), ``recipe`` set."""
    config = copy.deepcopy(CONFIG_DEFAULTS)
    config.update(copy.deepcopy(RECIPES[name]))
    config["recipe"] = name
    return config
