"""Training recipes, in one visible place: CONFIG_DEFAULTS, then one recipe per name (the papers' and ours).

A run's config starts from CONFIG_DEFAULTS, then the recipe (``--recipe``, by default the one named like
``--arch``), then the command line. Every key here is a known key with a type; an override of an unknown key or
of the wrong type is an error. ``milestones`` are fractions of the epochs, so a shortened run keeps the schedule's
shape (Schneider 2020: x0.1 at epochs 100 and 140 of 145).
"""
import copy

from core.messages import logger
from data.augment import TRAIN_DEFAULT_AUGS

log = logger(__name__)

CONFIG_DEFAULTS = {
    "arch": "",
    "recipe": "",
    "data_root": "",                # empty: data/freihand when it holds a dataset, else the synthetic set
    "img_size": 224,                # the input size of the first stage (of the only one without ``stages``)
    "batch_size": 32,
    "epochs": 100,
    "stages": [],                   # the run's last stages at other sizes, each a fraction of the epochs, e.g.
                                    # [{"fraction": 0.1, "img_size": 288}] (training/stages.py); predictions use the
                                    # last stage's size
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
    "cpu_bf16": False,              # bf16 autocast of the training step on a CPU with bf16 instructions (predictions
                                    # stay fp32 there); on where it measured faster (docs/recipes.md)
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
    "budget_minutes": 0.0,          # train fewer epochs where the run would take longer than this on this machine,
                                    # timed before the first step (training/budget.py); 0 = every epoch
    "checkpoint_minutes": 30.0,     # also write last.pt inside an epoch this often (0 = at epoch ends only)
    "pseudo_labels": "",            # a prediction .npz of an unlabelled split: its images join training
                                    # (data/pseudo.py)
    "pseudo_weight": 1.0,           # the loss weight of a pseudo-labelled image (a labelled one weighs 1)
    "pseudo_keep": 1.0,             # the share of pseudo-labelled images kept, the surest first (an ensemble's spread)
}

# The papers' own settings (docs/references.md names each paper)
_SCHNEIDER2020 = {"img_size": 224, "batch_size": 32, "epochs": 145, "optimizer": "adam", "lr": 1e-4,
                  "schedule": "multistep", "milestones": [100 / 145, 140 / 145], "gamma": 0.1,
                  "loss": {"coord_mse": 1.0}, "augs": "rotate"}
_REICHARDT2021 = {"img_size": 128, "batch_size": 64, "optimizer": "adam", "lr": 1e-4, "schedule": "cosine",
                  "loss": {"coord_l1": 1.0}}
_LIU2018 = {"arch": "hourglass_attn", "img_size": 128, "batch_size": 32, "epochs": 50, "optimizer": "sgd",
            "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-5, "schedule": "multistep", "milestones": [0.5, 0.75],
            "gamma": 0.1, "pretrained": "none", "augs": "rotate"}
_HE2021 = {"arch": "hg_mlp", "img_size": 128, "batch_size": 32, "epochs": 100, "optimizer": "adam", "lr": 1e-4,
           "schedule": "multistep", "milestones": [0.5, 0.75], "pretrained": "none", "augs": "rotate"}
_HE2021_LOSS = {"heatmap2d": 0.1 * 21 * 64 * 64, "pose_l2": 1.0 * 0.15 ** 2}

# ours: what made a model learn the fingers from random weights on a CPU (docs/recipes.md), for any arch with 2D
# heatmaps: 64 px, batch 16, AdamW with warm-up + cosine per step, EMA, the 3 best epochs averaged, the heatmap
# term weighted 30 beside the 2D and depth L1 terms, rotations within +-30 degrees (TTA spans the same)
_CPU_HEAD = {"img_size": 64, "batch_size": 16, "epochs": 30, "optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05,
             "schedule": "cosine", "min_lr_ratio": 0.02, "warmup_epochs": 1.0, "ema_decay": 0.999,
             "average_top_k": 3, "loss": {"heatmap2d": 30.0, "uv_l1": 1.0, "depth_l1": 1.0}, "augs": "rotate",
             "aug": {"rotate": {"max_deg": 30.0}}, "pretrained": "none", "short_on_cpu": False}

# ours, for a GPU: _CPU_HEAD's loss and schedule at 224 px on real data (ImageNet weights where the arch has them),
# the papers' full rotations (TTA spans them) and their other augmentations, batch 64
_GPU_HEAD = {**_CPU_HEAD, "img_size": 224, "batch_size": 64, "epochs": 100, "lr": 1e-3, "warmup_epochs": 2.0,
             "min_lr_ratio": 0.01, "ema_decay": 0.9998, "augs": "background,rotate,occlude", "aug": {},
             "pretrained": "auto", "short_on_cpu": True}

# CPU recipes are named <arch>[_head]_<input px>_cpu; why each is as it is: docs/recipes.md
RECIPES = {
    # Schneider 2020: EfficientNet encoder + 1D-heatmap decoder, MSE, Adam 1e-4, MultiStepLR, rotations up to 180 deg
    "effb4_1d": {**_SCHNEIDER2020, "arch": "effb4_1d", "model": {"num_blocks": 4, "channels": 128}},
    "effb0_1d": {**_SCHNEIDER2020, "arch": "effb0_1d", "model": {"num_blocks": 4, "channels": 128}},
    # ours: effb0_1d from random weights: 10x the lr and small batches to move fast, no stochastic depth, and js1d
    # pulls the 1D heatmaps towards Gaussians at the targets, which finds the hand sooner than coordinates alone
    "effb0_1d_scratch": {**_SCHNEIDER2020, "arch": "effb0_1d",
                         "model": {"num_blocks": 4, "channels": 128, "drop_connect": 0.0},
                         "pretrained": "none", "batch_size": 8, "lr": 1e-3, "loss": {"coord_mse": 1.0, "js1d": 1.0},
                         "augs": "none"},
    # ours, the CPU recipe: Liu 2018's hourglass cut to one 64-channel stack of depth 3 at a quarter of a 64 px
    # input so that a CPU takes many steps; depth by lifting the canonical 2D pose; the heatmap term, not the
    # coordinates, teaches where the fingers are, hence its weight 30; rotations within +-45 degrees (TTA too), scale
    # and shift; the last 38 epochs at 96 px, where its heatmaps are 24x24, not 16x16; bf16 on CPUs that have it;
    # the lifting network drops half its last hidden units, as it learned the training poses' depths by heart, and
    # also reads each hand turned out of the image plane (tilted_views: the foreshortening of more poses);
    # 76 epochs fill 30 minutes of a 2-core CPU with bf16: a slower one trains the epochs that fit 30 (budget_minutes)
    "hourglass_attn_64_cpu": {**_LIU2018, "img_size": 64, "batch_size": 16, "epochs": 76,
                              "stages": [{"fraction": 0.5, "img_size": 96}], "cpu_bf16": True, "budget_minutes": 30.0,
                              "optimizer": "adamw",
                              "lr": 3e-3, "weight_decay": 0.05, "schedule": "cosine", "min_lr_ratio": 0.02,
                              "warmup_epochs": 1.0, "ema_decay": 0.999, "average_top_k": 3,
                              "model": {"channels": 64, "num_stacks": 1, "hourglass_depth": 3, "stem_stride": 4,
                                        "depth_head": "lifting", "lifting_dropout": 0.5},
                              "loss": {"heatmap2d": 30.0, "uv_l1": 1.0, "depth_l1": 1.0, "tilted_views": 1.0},
                              "augs": "scale,rotate,translate", "aug": {"rotate": {"max_deg": 45.0}},
                              "short_on_cpu": False},
    # ours: the effb0 encoder under the shared U-Net head with _CPU_HEAD's settings; the encoder stops at stride 16
    # (at 64 px the stride-32 stage sees 2x2 yet holds most weights), twice the lr; scale, shift and stochastic
    # depth because 5 M weights fit the synthetic poses soon; a narrower decoder buys more epochs
    # the last 16 epochs at 96 px (bf16 is slower than fp32 for its depthwise convolutions on a CPU); the lifting
    # network also learns depth from tilted views of each training hand, as the hourglass's
    "effb0_unet_64_cpu": {**_CPU_HEAD, "arch": "effb0_1d", "epochs": 54, "budget_minutes": 30.0,
                          "stages": [{"fraction": 0.3, "img_size": 96}], "lr": 4e-3, "augs": "scale,rotate,translate",
                          "model": {"head": "unet", "drop_connect": 0.1, "encoder_depth": 4, "decoder_width": 48},
                          "loss": {**_CPU_HEAD["loss"], "tilted_views": 1.0}},
    # ours, the same head on the other encoders and hourglasses, for the table of every arch at one CPU budget
    # (tools/arch_table.py sets their epochs)
    "effb4_unet_64_cpu": {**_CPU_HEAD, "arch": "effb4_1d", "lr": 4e-3,
                          "model": {"head": "unet", "drop_connect": 0.0, "encoder_depth": 4}},  # as effb0's
    "resnet34_unet_64_cpu": {**_CPU_HEAD, "arch": "resnet34", "model": {"head": "unet"}},
    "resnet101_unet_64_cpu": {**_CPU_HEAD, "arch": "resnet101", "model": {"head": "unet"}},
    "res50x2_res34_64_cpu": {**_CPU_HEAD, "arch": "res50x2_res34", "loss": {"coord_l1": 1.0}},  # no heatmaps
    "ghost_lite_64_cpu": {**_CPU_HEAD, "arch": "ghost_lite", "model": {"head": "lifting"}},
    "hg_mlp_64_cpu": {**_CPU_HEAD, "arch": "hg_mlp", "model": {"head": "lifting", "channels": 64, "num_stacks": 1,
                                                               "hourglass_depth": 3, "stem_stride": 4}},
    # ours: Schneider 2020's arch with its own 1D head on a CPU: the stride-16 features (a 4x4 map, not 2x2 at
    # 64 px), UNet-style skips into the xy branch, I2L-MeshNet's pooled depth read-out, MSE + the SimCC KL term
    "effb0_1d_64_cpu": {**_SCHNEIDER2020, "arch": "effb0_1d", "img_size": 64, "batch_size": 16, "epochs": 25,
                        "optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05, "schedule": "cosine",
                        "min_lr_ratio": 0.02, "warmup_epochs": 1.0, "ema_decay": 0.999, "average_top_k": 3,
                        "model": {"num_blocks": 3, "channels": 128, "drop_connect": 0.0, "z_readout": "pooled",
                                  "encoder_depth": 4, "skips": True},
                        "loss": {"coord_mse": 1.0, "simcc_kl": 0.1}, "augs": "rotate", "pretrained": "none",
                        "short_on_cpu": False},
    # ours, for a GPU: Schneider 2020's EfficientNet-B4 under the shared head, which beat its 1D decoder on the CPU
    # (docs/recipes.md); the whole encoder, since at 224 px its stride-32 stage sees 7x7; the last 10 epochs at
    # 320 px, towards the 380 px EfficientNet-B4 was made for (FreiHAND's images are 224 px: upsampled)
    "effb4_1d_plus": {**_GPU_HEAD, "arch": "effb4_1d", "model": {"head": "unet"},
                      "stages": [{"fraction": 0.1, "img_size": 320}]},
    # ours, for a GPU: Reichardt 2021's ResNet34 as a feature extractor under the shared head, since 2D accuracy
    # was the lever on the CPU and direct regression stayed above the constant shape there; the last 10 epochs at
    # 288 px (FixRes's train-test resolution gap)
    "resnet34_plus": {**_GPU_HEAD, "arch": "resnet34", "model": {"head": "unet"},
                      "stages": [{"fraction": 0.1, "img_size": 288}]},
    # Reichardt 2021: direct regression, 128 px, L1, Adam, cosine annealing; ResNet101 was its best without clutter
    "resnet34": {**_REICHARDT2021, "arch": "resnet34", "epochs": 150, "augs": "background,rotate,occlude"},
    "resnet101": {**_REICHARDT2021, "arch": "resnet101", "epochs": 200, "augs": "background,rotate"},
    "res50x2_res34": {**_REICHARDT2021, "arch": "res50x2_res34", "epochs": 240, "augs": "background,rotate,occlude"},
    # Liu 2022: L1 on 2D + L1 on depth; the paper names no optimiser or schedule (ours: Adam 1e-3, cosine)
    "ghost_lite": {"arch": "ghost_lite", "img_size": 128, "batch_size": 64, "epochs": 100, "optimizer": "adam",
                   "lr": 1e-3, "schedule": "cosine", "pretrained": "none", "loss": {"uv_l1": 1.0, "depth_l1": 1.0},
                   "augs": "background,rotate,occlude"},
    # Liu 2018: SGD momentum 0.9, wd 5e-5, lr 0.1 divided by 10 twice; heatmap L2 + depth. On RGB the heatmaps
    # alone barely find their peaks at this lr, so the 2D read-out gets an L1 term; the paper's own loss is
    # hourglass_attn_liu2018.
    "hourglass_attn": {**_LIU2018, "loss": {"heatmap2d": 1.0, "uv_l1": 1.0, "depth_l1": 1.0}},
    "hourglass_attn_liu2018": {**_LIU2018, "loss": {"heatmap2d": 1.0, "depth_l1": 1.0}},
    # He 2021: its loss family in our units: it sums the heatmap error over 21 x 64 x 64 pixels (ours is a mean)
    # and measures poses in metres (ours in units of 0.15 m). M-asm gives no numbers: ASM at twice the pose
    # weight, decaying linearly to 0.
    "hg_mlp": {**_HE2021, "loss": {**_HE2021_LOSS, "asm": 0.045, "asm_decay": "linear"}},           # M-asm
    "hg_mlp_cos1": {**_HE2021, "loss": {**_HE2021_LOSS, "bone_length": 0.0015, "bone_direction": 0.1,
                                         "bone_cosine": 10.0}},                                         # M-cos-1
    "hg_mlp_cos2": {**_HE2021, "loss": {**_HE2021_LOSS, "bone_cosine": 10.0}},                         # M-cos-2
}

# Earlier names, accepted for a while: each run under one says its new name in one line
RECIPE_ALIASES = {"synthetic_cpu": "hourglass_attn_64_cpu", "effb0_cpu": "effb0_unet_64_cpu",
                  "effb0_1d_cpu": "effb0_1d_64_cpu", "effb4_cpu": "effb4_unet_64_cpu",
                  "resnet34_cpu": "resnet34_unet_64_cpu", "resnet101_cpu": "resnet101_unet_64_cpu",
                  "res50x2_res34_cpu": "res50x2_res34_64_cpu", "ghost_lite_cpu": "ghost_lite_64_cpu",
                  "hg_mlp_cpu": "hg_mlp_64_cpu", "hourglass_attn_seed": "hourglass_attn_liu2018"}


def recipe_names():
    return sorted(RECIPES)


def current_name(name, warn=False):
    """``name`` itself, or the recipe an earlier name now stands for (a warning says so when ``warn``)."""
    if name in RECIPE_ALIASES and warn:
        log.warning(f"recipe {name!r} is now called {RECIPE_ALIASES[name]!r}; the old name will stop working")
    return RECIPE_ALIASES.get(name, name)


def recipe_config(name):
    """CONFIG_DEFAULTS with the recipe ``name`` applied (a fresh copy; ``name`` must be a recipe), ``recipe`` set."""
    config = copy.deepcopy(CONFIG_DEFAULTS)
    config.update(copy.deepcopy(RECIPES[name]))
    config["recipe"] = name
    return config
