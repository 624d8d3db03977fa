"""Training stages: a run may end with stages that train at other input sizes (progressive resizing: most epochs at
a small size, the last at a larger one, where the test-time size is; FixRes). ``config['stages']`` lists them in
order, each ``{"fraction": F, "img_size": S}``: a fraction of the run's epochs (rounded; a stage that rounds to no
epoch is left out), as ``milestones`` are, so a shortened run keeps its shape. The run's first stage is
``config['img_size']`` for the epochs the others leave. A stage is a function of the epoch, so a resumed run is in
the stage it stopped in; the best weights and the averaged top-k epochs are those of the last stage (the size
predict.py uses)."""
import math
from dataclasses import dataclass

import models
from core.common import UserError
from data import augment
from data.dataset import make_dataset
from data.loader import make_loader, shut_down
from data.pseudo import WeightedUnion
from models.losses import is_number

STAGE_KEYS = ("fraction", "img_size")
EXAMPLE = '--set \'stages=[{"fraction": 0.2, "img_size": 128}]\''


@dataclass(frozen=True)
class Stage:
    index: int          # 0 for the run's first stage
    first_epoch: int    # 1-based, inclusive
    last_epoch: int
    img_size: int

    def describe(self, count):
        return (f"stage {self.index + 1} of {count}: epochs {self.first_epoch}-{self.last_epoch} at "
                f"{self.img_size} px")


def stage_epochs(fraction, epochs):
    """The epochs of a stage of ``fraction`` of a run of ``epochs`` (rounded half up)."""
    return math.floor(fraction * epochs + 0.5)


def plan(config):
    """[Stage] of the run: the first at ``img_size``, then each of ``config['stages']`` that has an epoch. Where a
    time budget has fixed the stages' first epochs (``config['stage_starts']``, [[first epoch, img_size], ...];
    training/time_budget.py), the last stage alone follows ``config['epochs']``."""
    if config.get("stage_starts"):
        starts = config["stage_starts"]
        ends = [first - 1 for first, _ in starts[1:]] + [config["epochs"]]
        return [Stage(index, first, end, size) for index, ((first, size), end) in enumerate(zip(starts, ends))]
    lengths = [(stage_epochs(stage["fraction"], config["epochs"]), stage["img_size"]) for stage in config["stages"]]
    lengths = [(epochs, size) for epochs, size in lengths if epochs]
    first_epochs = config["epochs"] - sum(epochs for epochs, _ in lengths)
    stages, epoch = [Stage(0, 1, first_epochs, config["img_size"])], first_epochs
    for epochs, size in lengths:
        stages.append(Stage(len(stages), epoch + 1, epoch + epochs, size))
        epoch += epochs
    return stages


def stage_at(config, epoch):
    """The Stage that trains ``epoch`` (1-based)."""
    return next(stage for stage in plan(config) if stage.first_epoch <= epoch <= stage.last_epoch)


def final_size(config):
    """The input size of the run's last stage: the size its best.pt is trained, validated and predicted at."""
    return plan(config)[-1].img_size


def describe_sizes(config):
    """'64 px' or '64 px, then 128 px for epochs 57-68' (the start-up line)."""
    first, *later = plan(config)
    return ", then ".join([f"{first.img_size} px"] + [f"{stage.img_size} px for epochs {stage.first_epoch}-"
                                                      f"{stage.last_epoch}" for stage in later])


def check_stages(config):
    """A UserError naming the stage and the fix when ``config['stages']`` is malformed, leaves the first stage no
    epoch, or asks an arch that cannot take another input size (or not this one) for it."""
    stages = config["stages"]
    for number, stage in enumerate(stages, start=2):
        if not (isinstance(stage, dict) and sorted(stage) == sorted(STAGE_KEYS) and is_number(stage["fraction"])
                and 0 < stage["fraction"] < 1 and isinstance(stage["img_size"], int)
                and not isinstance(stage["img_size"], bool) and stage["img_size"] >= 1):
            raise UserError(f"stages: stage {number} is {stage!r}; each stage is {{\"fraction\": F, \"img_size\": S}} "
                            f"with F in (0, 1) and a whole S, e.g. {EXAMPLE}")
    first = plan(config)[0]
    if stages and first.last_epoch < 1:
        raise UserError(f"stages take {config['epochs'] - first.last_epoch} of the {config['epochs']} epochs, "
                        f"leaving none at img_size {config['img_size']}: give more --epochs or smaller fractions")
    entry = models.model_entry(config["arch"])
    if stages and not entry.resizable:
        raise UserError(f"arch {config['arch']} cannot change its input size during a run (its head is built "
                        f"for {config['img_size']} px): drop the stages")
    for stage in stages:
        size, multiple = stage["img_size"], entry.size_multiple
        if size % multiple:
            raise UserError(f"stages: img_size {size} is not a multiple of {multiple}, which {config['arch']} needs to "
                            f"take a new input size: choose {size // multiple * multiple or multiple} or "
                            f"{(size // multiple + 1) * multiple}")


class StageInputs:
    """The current stage's datasets, loaders and augmenters, built at its input size (each size its own decoded
    cache) and rebuilt when a stage changes the size. ``splits`` is (train, val, pseudo-labelled or None)."""

    def __init__(self, config, device, rank, world_size, splits):
        self.config, self.device, self.rank, self.world_size, self.splits = config, device, rank, world_size, splits
        self.size = None
        self.train_set = self.val_set = self.train_loader = self.val_loader = None
        self.augmenter = self.augmenter_final = None  # the augmentations of the last final_epochs

    def use(self, size):
        """Make ``size`` the current input size (nothing to do when it is); returns whether it changed."""
        if size == self.size:
            return False
        self.close()
        config, cuda = self.config, self.device.type == "cuda"
        train_split, val_split, pseudo = self.splits
        train_set, self.val_set = (make_dataset(split, size, cache=config["cache"])
                                   for split in (train_split, val_split))
        if pseudo is not None:
            train_set = WeightedUnion([train_set, make_dataset(pseudo, size, cache=config["cache"])],
                                      [1.0, config["pseudo_weight"]])
        self.train_set = train_set
        if len(train_set) < config["batch_size"] * self.world_size:
            raise UserError(f"{len(train_set)} training images are fewer than one batch of {config['batch_size']} "
                            f"per process; lower --batch-size")
        self.train_loader = make_loader(train_set, config["batch_size"], train=True, workers=config["workers"],
                                        seed=config["seed"], rank=self.rank, world_size=self.world_size,
                                        pin_memory=cuda, shielded=True)
        self.val_loader = make_loader(self.val_set, config["batch_size"], train=False, workers=config["workers"],
                                      pin_memory=cuda, shielded=True)
        self.augmenter, self.augmenter_final = (
            augment.Augmenter(augment.parse_augs(augs), augment.resolve_options(config["aug"]), size, self.device,
                              backgrounds=config["backgrounds"] or None)
            for augs in (config["augs"], config["augs_final"] or config["augs"]))
        self.size = size
        return True

    def close(self):
        """End the loaders' worker processes (they ignore stop signals: end them before the interpreter exits)."""
        for loader in (self.train_loader, self.val_loader):
            if loader is not None:
                shut_down(loader)
