"""Optimiser, learning-rate schedule and weight EMA of a training run, all built from the run's config.

Schedules are stepped once per optimiser step (``steps_per_epoch`` of them an epoch), so warm-up and the
cosine decay are smooth whatever the epoch count; their whole state is the step counter, so ``--resume``
continues them exactly.

* ``multistep`` (Schneider 2020 as written): x ``gamma`` at each milestone (fractions of the epochs, rounded to an
  epoch boundary);
* ``cosine``: from the peak lr down to ``lr * min_lr_ratio`` at the last step;
* ``onecycle``: torch's OneCycleLR (cosine rise over ``onecycle_pct`` of the steps, then cosine fall to
  ``lr / 1e4``); it has its own warm-up, so ``warmup_epochs`` must be 0 with it;
* ``constant``.
A linear warm-up from ``lr * warmup_start`` to the schedule's value spans the first ``warmup_epochs`` epochs
(a float; 0 = none).
"""
import math

import torch
from timm.optim import param_groups_weight_decay
from timm.utils import ModelEmaV3

SCHEDULES = ("multistep", "cosine", "onecycle", "constant")
OPTIMIZERS = ("adam", "adamw", "sgd")
FUSED_DEVICES = ("cpu", "cuda")  # where torch has fused Adam, AdamW and SGD kernels


def make_optimizer(model, config):
    """Adam, AdamW or SGD over the trainable parameters. AdamW's weight decay spares norms and biases (timm's
    groups put every 1-D parameter in a group without decay); Adam and SGD decay every parameter, as the papers
    that name them wrote. Fused kernels where torch has them (the CPU and CUDA): one kernel over all parameters
    instead of a loop of small operations per parameter, the same update."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in params)
    if config["optimizer"] == "adamw":
        return torch.optim.AdamW(param_groups_weight_decay(model, config["weight_decay"]), lr=config["lr"],
                                 fused=fused)
    if config["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=config["lr"], momentum=config["momentum"],
                               weight_decay=config["weight_decay"], fused=fused)
    return torch.optim.Adam(params, lr=config["lr"], weight_decay=config["weight_decay"], fused=fused)


def schedule_factor(step, total_steps, steps_per_epoch, config):
    """The lr multiplier (of ``config['lr']``) after ``step`` optimiser steps, warm-up included."""
    if config["schedule"] == "cosine":
        floor = config["min_lr_ratio"]
        factor = floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(step / max(total_steps, 1), 1.0)))
    elif config["schedule"] == "multistep":
        epoch = step // steps_per_epoch  # epochs completed
        milestones = {max(1, round(f * config["epochs"])) for f in config["milestones"]}
        factor = config["gamma"] ** sum(epoch >= m for m in milestones)
    else:
        factor = 1.0
    warmup_steps = round(config["warmup_epochs"] * steps_per_epoch)
    if step < warmup_steps:
        start = config["warmup_start"]
        factor *= start + (1.0 - start) * step / warmup_steps
    return factor


def make_scheduler(optimizer, config, steps_per_epoch):
    """A scheduler to step after every optimiser step."""
    if config["schedule"] == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config["lr"],
                                                   total_steps=steps_per_epoch * config["epochs"],
                                                   pct_start=config["onecycle_pct"], final_div_factor=1e4 / 25,
                                                   cycle_momentum=False)
    # the epochs read at every step: a time budget may set them in the first stage (training/time_budget.py)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: schedule_factor(step, steps_per_epoch * config["epochs"], steps_per_epoch, config))


def rescale_lr(optimizer, scheduler, factor):
    """Multiply the lr of every parameter group and the schedule's reference lrs by ``factor`` (a resumed run
    given a new --lr), so the schedule continues from where it was at the new scale."""
    for group in optimizer.param_groups:
        for key in ("lr", "initial_lr", "max_lr", "min_lr"):
            if key in group:
                group[key] *= factor
    scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def make_ema(model, config):
    """timm's ModelEmaV3 of ``model``, or None when ``ema_decay`` is 0. It keeps its own copy, updated after every
    optimiser step with decay min(ema_decay, 1 - (1 + step) ** -0.75): 0.9 after 20 steps, 0.99 after 460,
    0.999 after 10,000 (timm's warm-up), so a short run averages over a short window."""
    if not config["ema_decay"]:
        return None
    return ModelEmaV3(model, decay=config["ema_decay"], use_warmup=True, warmup_power=0.75)
