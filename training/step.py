"""One training step, shared by the trainer and bench.py (so the benchmark times the step that trains): the loss of
an augmented batch, then the optimiser step with clipping, the per-step lr schedule and the EMA.

``wrapped`` is the module that runs the forward pass (DDP / torch.compile around the model, or the model itself);
``model`` is the bare nn.Module whose parameters the optimiser and the EMA hold."""
import torch

from core.precision import autocast
from models import prepare_images
from models.heads import LiftingHead
from models.losses import loss_target, pose_loss


def float_aux(aux):
    """The model's aux outputs in float32 (the losses' precision under AMP)."""
    return {k: [t.float() for t in v] if isinstance(v, list) else v.float() for k, v in aux.items()}


def forward_loss(wrapped, batch, config, device, channels_last, fraction_done=0.0):
    """The loss of one augmented batch under ``config['loss']``: (scalar, unweighted terms). ``fraction_done`` in
    [0, 1] is the share of training done (terms whose weight decays read it)."""
    x = prepare_images(batch["image"])                                   # (B, 3, S, S) float, normalised
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(device, config["amp"], config["cpu_bf16"]):
        uvd, aux = wrapped(x, return_aux=True)                             # (B, 21, 3), dict
    # the batch's own size: a later training stage's differs from config['img_size'] (training/stages.py)
    return pose_loss(uvd.float(), float_aux(aux), loss_target(batch, x.shape[-1]), config["loss"],
                     fraction_done, lifting_network(wrapped))


def lifting_network(wrapped):
    """The model's lifting network (``models.heads.LiftingHead``, found inside DDP / torch.compile), or None.
    The ``tilted_views`` term runs it outside the forward pass, within the same backward pass, so DDP still
    reduces each of its gradients once."""
    return next((module for module in wrapped.modules() if isinstance(module, LiftingHead)), None)


def optimizer_step(model, optimizer, scaler, grad_clip, scheduler=None, ema=None, steps_done=0):
    """Clip the gradients of ``model`` to ``grad_clip`` (0: off), step the optimiser, then the lr schedule and the
    EMA when given (``steps_done`` counts this step)."""
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()
    if ema is not None:
        ema.update(model, step=steps_done)
