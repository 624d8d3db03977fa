"""optimization.py: per-step schedules with warm-up, the optimiser's parameter groups, the EMA."""
import copy
import math

import pytest
import torch

from training import optimization
from training import recipes

STEPS_PER_EPOCH = 10


def config(**overrides):
    return {**copy.deepcopy(recipes.CONFIG_DEFAULTS), "epochs": 4, "lr": 1.0, **overrides}


def lrs(cfg):
    """The lr before each of the run's optimiser steps, as the scheduler sets it."""
    model = torch.nn.Linear(2, 2)
    optimizer = optimization.make_optimizer(model, cfg)
    scheduler = optimization.make_scheduler(optimizer, cfg, STEPS_PER_EPOCH)
    values = []
    for _ in range(STEPS_PER_EPOCH * cfg["epochs"]):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


def test_warmup_rises_linearly_then_cosine_falls_to_its_floor():
    values = lrs(config(schedule="cosine", warmup_epochs=1.0, warmup_start=0.0, min_lr_ratio=0.1))
    total = STEPS_PER_EPOCH * 4
    for step in (0, 3, 7):  # warm-up: the cosine factor times step / warm-up steps
        cosine = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / total))
        assert values[step] == pytest.approx(cosine * step / STEPS_PER_EPOCH)
    assert values[STEPS_PER_EPOCH:] == sorted(values[STEPS_PER_EPOCH:], reverse=True)
    assert values[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (total - 1) / total)))
    assert min(values[STEPS_PER_EPOCH:]) > 0.1


def test_multistep_changes_only_at_epoch_boundaries():
    values = lrs(config(schedule="multistep", milestones=[0.5, 0.75], gamma=0.1))
    epochs = [values[e * STEPS_PER_EPOCH:(e + 1) * STEPS_PER_EPOCH] for e in range(4)]
    for values_of_epoch, expected in zip(epochs, (1.0, 1.0, 0.1, 0.01)):
        assert values_of_epoch == pytest.approx([expected] * STEPS_PER_EPOCH)


def test_onecycle_rises_then_falls_far_below_the_peak():
    values = lrs(config(schedule="onecycle", onecycle_pct=0.25))
    peak = values.index(max(values))
    assert max(values) == pytest.approx(1.0, rel=1e-3) and 5 <= peak <= 15
    assert values[0] < 0.1 and values[-1] < 1e-3


def test_weight_decay_spares_norms_and_biases_and_frozen_parameters():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 4, 1))
    model[2].requires_grad_(False)
    optimizer = optimization.make_optimizer(model, config(optimizer="adamw", weight_decay=0.05))
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    everything = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert decayed == {id(model[0].weight)}
    assert id(model[2].weight) not in everything and id(model[1].weight) in everything


def test_ema_follows_the_weights_with_its_decay_and_is_off_at_zero():
    model = torch.nn.Linear(1, 1, bias=False)
    assert optimization.make_ema(model, config(ema_decay=0.0)) is None
    ema = optimization.make_ema(model, config(ema_decay=0.5))
    with torch.no_grad():
        model.weight.fill_(1.0)
        ema.module.weight.fill_(0.0)
    ema.update(model, step=10_000)  # after the ramp, decay = 0.5
    assert ema.module.weight.item() == pytest.approx(0.5)


@pytest.mark.parametrize("name", optimization.OPTIMIZERS)
def test_fused_kernels_on_the_cpu_make_the_same_update_as_the_loop(name):
    cfg = config(optimizer=name, lr=0.01, weight_decay=0.05)
    torch.manual_seed(0)
    fused_model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 1))
    loop_model = copy.deepcopy(fused_model)
    fused = optimization.make_optimizer(fused_model, cfg)
    assert all(group["fused"] for group in fused.param_groups)
    loop = optimization.make_optimizer(loop_model, cfg)
    for group in loop.param_groups:  # the per-parameter loop torch runs without fused kernels
        group["fused"] = False
    start = fused_model[0].weight.detach().clone()
    x = torch.randn(8, 3)
    for _ in range(5):
        for model, optimizer in ((fused_model, fused), (loop_model, loop)):
            optimizer.zero_grad()
            model(x).pow(2).mean().backward()
            optimizer.step()
    for a, b in zip(fused_model.parameters(), loop_model.parameters()):
        torch.testing.assert_close(a, b)
    assert (fused_model[0].weight - start).abs().min() > 1e-3  # five real steps, not none
