"""A training run's state, typed and split by lifetime: ``RunSetup`` (fixed once the run is set up), ``RunParts``
(the built parts: the model and its wrapped twin, EMA, optimiser, schedule, scaler, the stage's inputs) and
``Progress`` (what last.pt holds beyond the parts' states: epochs done, the best validation, the log's rows, and
the ``EpochPosition`` when it was written inside an epoch); the random streams that continue a run exactly, and
the stop signals that end it cleanly.

A run stops at an optimiser-step boundary: when SIGINT (Ctrl-C) or SIGTERM (a scheduler, torchrun, a notebook's
end) arrives, the step in progress finishes, every process agrees on that step (``agree``), and rank 0 writes
last.pt with an ``EpochPosition``: the epoch in progress, the batches of it done, the running sums log.csv reports,
and every process's random streams. The same is written every ``checkpoint_minutes``. A resumed run regenerates
the epoch's order from the seeded sampler, skips the batches done (without loading them), restores the streams and
so ends with the weights of a run never stopped.
"""
import math
import os
import random
import signal
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.distributed as dist

from core.common import STOP_SIGNALS, Interrupted, Terminated

SIGNAL_NAMES = {signal.SIGINT: "SIGINT (Ctrl-C)", signal.SIGTERM: "SIGTERM"}


@dataclass
class EpochPosition:
    """Where a run stands inside epoch ``epoch`` of ``epoch_batches`` batches per process: ``batches`` of them done
    (a whole number of optimiser steps), ``lr`` at the epoch's first step, the loss sums and counts of log.csv's
    row, the seconds spent training in it, the number of processes whose shards those batches are, the input size
    of its stage, and, once saved, every process's ``random_streams`` by rank."""
    epoch: int
    epoch_batches: int
    lr: float
    world_size: int = 1
    batches: int = 0
    totals: dict = field(default_factory=dict)   # loss term -> sum over the batches done (float or 0-d tensor)
    count: int = 0
    images: int = 0
    seconds: float = 0.0
    streams: list = field(default_factory=list)
    img_size: int = 0           # the input size of the epoch's stage (0: written before stages)

    def add(self, terms, images):
        """Count one batch: its loss terms (0-d tensors, summed without a device sync) and its images."""
        for key, value in terms.items():
            self.totals[key] = self.totals.get(key, 0.0) + value.detach()
        self.count += 1
        self.images += images

    def to_dict(self):
        """Plain values for a checkpoint (the loss sums as floats: exactly the float32 sums)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**values, "totals": {key: float(value) for key, value in self.totals.items()}}

    @classmethod
    def from_dict(cls, values):
        return cls(**values)

    def describe(self, accumulate):
        return f"step {self.batches // accumulate} of {self.epoch_batches // accumulate} of epoch {self.epoch}"


@dataclass(frozen=True)
class RunSetup:
    """What is fixed once a run is set up."""
    config: dict
    folder: Path
    rank: int
    world_size: int
    device: torch.device
    stats: dict                 # facts about the training labels that every checkpoint carries (setup.training_stats)
    constant_shape_mm: float    # the yardstick: PA-MPJPE (mm) of the constant shape on the validation split


@dataclass
class RunParts:
    """The built parts of a run. ``model`` is the bare nn.Module (optimiser, EMA, checkpoints); ``wrapped`` runs the
    training forward passes: ``model`` inside DDP and/or torch.compile, or ``model`` itself."""
    model: torch.nn.Module
    wrapped: torch.nn.Module
    ema: Any                    # timm ModelEmaV3, or None when ema_decay is 0
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    inputs: Any                 # stages.StageInputs: the current stage's datasets, loaders and augmenters
    steps_per_epoch: int        # optimiser steps per epoch (batches // accumulate), the same in every stage
    params: int

    @property
    def evaluated(self):
        """The weights that are validated, saved in best.pt and predicted with: the EMA when kept, else the model."""
        return self.ema.module if self.ema is not None else self.model


@dataclass
class Progress:
    """What last.pt holds beyond the parts' states: ``epoch`` (epochs done), ``best_mm`` (the validation PA-MPJPE
    of best.pt) and ``best_epoch`` (its epoch, or "average" for the top-k average), ``history`` (log.csv's rows) and,
    when it was written inside an epoch, ``position``."""
    epoch: int = 0
    best_mm: float = math.inf
    best_epoch: Optional[Union[int, str]] = None
    history: list = field(default_factory=list)
    position: Optional[EpochPosition] = None

    def describe(self, accumulate):
        """What last.pt holds, in words (None before anything was kept)."""
        if self.position is not None:
            return self.position.describe(accumulate)
        return f"epoch {self.epoch}" if self.epoch else None


# --- random streams -------------------------------------------------------------------------------------------

def random_streams(device, generator):
    """This process's random streams: Python's, NumPy's, torch's on the CPU and on a CUDA ``device``, and the
    augmentation ``generator``'s."""
    return {"device": device.type, "python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "augment": generator.get_state()}


def restore_streams(streams, device, generator):
    """Set the streams ``random_streams`` returned. Returns False, having set the CPU ones only, when the run moved
    to another kind of device (the augmentation generator's and CUDA's streams do not carry over)."""
    random.setstate(streams["python"])
    np.random.set_state(streams["numpy"])
    torch.set_rng_state(streams["torch"])
    if streams["device"] != device.type:
        return False
    if streams["cuda"] is not None:
        torch.cuda.set_rng_state(streams["cuda"], device)
    generator.set_state(streams["augment"])
    return True


def seed_everything(seed):
    """Every RNG stream re-seeded; each epoch starts with ``seed * 1000 + epoch``, so a run resumed at an epoch's start
    draws the same augmentations and dropout as one that never stopped (inside an epoch the saved streams are
    restored instead)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def gather_streams(streams, world_size):
    """Every process's ``streams``, by rank (a collective under DDP: every process calls it)."""
    if world_size == 1:
        return [streams]
    everyone = [None] * world_size
    dist.all_gather_object(everyone, streams)
    return everyone


# --- stopping ---------------------------------------------------------------------------------------------------

class StopSignals:
    """While active (``with StopSignals() as stop:``), the first SIGINT or SIGTERM only asks the run to stop at the
    next optimiser step: ``stop.received`` holds its number (0: none). A second one stops at once, as outside the
    block (KeyboardInterrupt, or common.Terminated for SIGTERM). Left by ``Interrupted`` (the clean stop), both
    signals are ignored from then on: the process is on its way out, and under torchrun the other ranks' ends
    signal it again. A signal that the process was started ignoring (SIGINT for a background job of a script, as
    Python itself leaves it) stays ignored."""

    def __enter__(self):
        self.received, self.owner = 0, os.getpid()
        ignored = {signum for signum in STOP_SIGNALS if signal.getsignal(signum) == signal.SIG_IGN}
        self.previous = {signum: signal.signal(signum, self._handle) for signum in STOP_SIGNALS
                         if signum not in ignored}
        return self

    def _handle(self, signum, frame):
        if os.getpid() != self.owner:  # a forked child that kept the handler: end as by default
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self.received:
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        self.received = int(signum)

    def __exit__(self, kind, error, trace):
        stopping = kind is not None and issubclass(kind, Interrupted)
        for signum, handler in self.previous.items():
            signal.signal(signum, signal.SIG_IGN if stopping else signal.SIG_DFL if handler is None else handler)
        return False


def agree(stop, world_size, device, save_due=False):
    """(signal number or 0, whether to save now) that every process acts on at this step: the highest signal any
    process received, and rank 0's ``save_due``. Without DDP nothing is communicated."""
    if world_size == 1:
        return stop.received, save_due
    flags = torch.tensor([float(stop.received), float(save_due)], device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    signum, save = flags.tolist()
    return int(signum), bool(save)


def exit_status(signum):
    """The shell's status for a process ended by ``signum``: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + int(signum)
