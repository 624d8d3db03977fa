"""A run's configuration: CONFIG_DEFAULTS (recipes.py) <- the recipe <- the command line, every key checked before
data is read or a folder made; the config a --resume continues with (only the changes it allows); the CPU budget
of the laptop default."""
import copy
import json
import math
import os
from pathlib import Path


import models
from core.common import UserError
from core.messages import logger
from data import augment
from models.losses import split_weights
from training import optimization
from training import recipes
from training import stages
from models.checkpoints import load_checkpoint
from training.recipes import CONFIG_DEFAULTS
from training.rundir import continue_command

log = logger(__name__)

# The laptop default: the synthetic set on the CPU with none of these keys given gets this short run, which
# ends in minutes; giving any of them on the command line hands the whole budget back to the recipe.
CPU_SYNTHETIC_BUDGET = {"img_size": 128, "epochs": 3, "batch_size": 16, "max_train_images": 480,
                        "max_val_images": 100, "stages": []}
SHORT_RUN_NOTE = ("; this was the short check that everything runs, too short to learn the fingers; the recipe "
                  "made for a CPU, `python train.py --recipe hourglass_attn_64_cpu`, learns them (docs/recipes.md)")
CLI_KEYS = ("data_root", "epochs", "batch_size", "img_size", "lr", "pretrained", "device", "seed", "augs",
            "backgrounds", "workers", "folds", "fold", "pseudo_labels", "budget_minutes")
PATH_KEYS = ("data_root", "backgrounds", "pseudo_labels")
# absent from older runs' configs: their defaults
NEWER_KEYS = ("pseudo_labels", "pseudo_weight", "pseudo_keep", "cpu_bf16", "stages", "budget_minutes")
RESUMABLE_OVERRIDES = ("device", "workers", "lr", "budget_minutes")   # what --resume may change: where it runs, the
# lr (scaled with its schedule), the time budget's deadline (its plan is made), clipping (after a NaN loss), how
# often a mid-epoch last.pt is written, and whether the images come from the decoded cache (the same pixels as the
# JPEGs)
RESUMABLE_SET_KEYS = ("grad_clip", "checkpoint_minutes", "cache")
NOT_SET = "(not set)"
PRETRAINED_WORDS = ("auto", "imagenet", "none")   # --pretrained values that are not a path


def parse_value(text):
    """JSON when it parses (numbers, true/false, lists), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def check_type(key, value, default):
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(value, bool) and isinstance(default, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float))
        value = float(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise UserError(f"{key}={value!r}: expected {type(default).__name__} like {default!r}")
    return value


def parse_sets(items):
    """--set KEY=VALUE items -> [(key, value)], each value through ``parse_value``; an item without '=' is a
    UserError."""
    pairs = []
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep:
            raise UserError(f"--set {item!r}: expected KEY=VALUE")
        pairs.append((key.strip(), parse_value(text.strip())))
    return pairs


def set_key(config, dotted, value):
    """Set ``a.b.c`` in the config; the top-level key must exist and keep its type (loss/aug/model are
    checked by their owners)."""
    top, *rest = dotted.split(".")
    if top not in CONFIG_DEFAULTS:
        raise UserError(f"unknown config key {top!r}; known keys: {', '.join(CONFIG_DEFAULTS)}")
    if not rest:
        config[top] = check_type(top, value, CONFIG_DEFAULTS[top])
        return
    if not isinstance(config[top], dict):
        raise UserError(f"{dotted}: {top!r} has no sub-keys")
    node = config[top]
    for part in rest[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"{dotted}: {part!r} has no sub-keys")
    node[rest[-1]] = value


def resolve_config(args):
    """CONFIG_DEFAULTS <- recipe <- command line. Returns (config, keys given on the command line)."""
    name = recipes.current_name(args.recipe, warn=True) if args.recipe else args.arch
    if not name:
        raise UserError("give --arch NAME (see --list-archs) or --recipe NAME")
    if name not in recipes.RECIPES:
        models.model_entry(name)  # an unknown arch gets the registry's message listing valid names
        raise UserError(f"no recipe {name!r} in recipes.py; known recipes: {', '.join(recipes.recipe_names())}")
    config = recipes.recipe_config(name)
    if args.arch and args.arch != config["arch"]:
        raise UserError(f"recipe {name!r} trains {config['arch']!r}, not --arch {args.arch!r}")
    given = {key for key in CLI_KEYS if getattr(args, key) is not None}
    config.update({key: getattr(args, key) for key in given})
    for key, value in parse_sets(args.set):
        set_key(config, key, value)
        given.add(key.split(".")[0])
    validate_config(config)
    resolve_paths(config)
    return config, given


def resolve_paths(config):
    """Paths are recorded resolved, so the run resumes from any folder and compares them as they are."""
    for key in PATH_KEYS:
        if config[key]:
            config[key] = str(Path(config[key]).expanduser().resolve())
    if config["pretrained"] not in PRETRAINED_WORDS:
        config["pretrained"] = str(Path(config["pretrained"]).expanduser().resolve())


def resume_config(args, folder):
    """(last.pt's state, its config with the changes --resume allows) for continuing the run in ``folder``. The
    run's original command line is accepted as it was typed: a value equal to the saved one is no change."""
    if not (folder / "last.pt").is_file():
        raise UserError(f"{folder} holds no last.pt to resume (no epoch of it finished); start it again without "
                        f"--resume: python train.py --out {folder} --arch ARCH ...")
    state = load_checkpoint(folder / "last.pt")
    config = copy.deepcopy(state["config"])
    for key in RESUMABLE_SET_KEYS + NEWER_KEYS:  # keys newer than the run, at the values it ran with
        config.setdefault(key, CONFIG_DEFAULTS[key])
    missing = sorted(set(CONFIG_DEFAULTS) - set(config))
    if missing:
        raise UserError(f"{folder / 'last.pt'} was written by an older train.py (its config lacks "
                        f"{', '.join(missing)}); start a new run")
    if args.arch and args.arch != config["arch"]:
        raise UserError(f"{folder} is a run of {config['arch']}, not --arch {args.arch}; resume it without --arch, "
                        f"or start a new {args.arch} run with another --out")
    changes = command_line_changes(args, config)
    fixed = [change for change in changes if change[1] not in RESUMABLE_OVERRIDES + RESUMABLE_SET_KEYS]
    if fixed:
        shown = "; ".join(f"{option} was {json.dumps(saved)}, given {json.dumps(given)}"
                          for option, _, saved, given in fixed)
        raise UserError(f"--resume continues {folder} with its saved config (its schedule included), but {shown}; "
                        f"only --{', --'.join(RESUMABLE_OVERRIDES)} and --set {', '.join(RESUMABLE_SET_KEYS)} may "
                        f"change: drop the change to continue the run, or start a new run with another --out")
    for _, key, _, value in changes:
        set_key(config, key, value)
    validate_config(config)
    check_position(state, folder)
    return state, config



def command_line_changes(args, config):
    """[(option as typed, config key, saved value, given value)] for every option on the command line whose value
    differs from the saved ``config``'s (paths compared resolved, augmentation lists as parsed). The epochs are
    compared with those the run was asked for, before a time budget shortened it (the same command resumes)."""
    config = {**config, "epochs": config.get("epochs_asked", config["epochs"])}
    changes = []
    # a recipe's earlier name is no change (the run may have been saved under it)
    if args.recipe and recipes.current_name(args.recipe, warn=True) != recipes.current_name(config["recipe"]):
        changes.append(("--recipe", "recipe", config["recipe"], args.recipe))
    for key in CLI_KEYS:
        given = getattr(args, key)
        if given is not None and not same_value(key, config[key], given):
            changes.append((f"--{key.replace('_', '-')}", key, config[key], given))
    for dotted, value in parse_sets(args.set):
        trial = copy.deepcopy(config)
        set_key(trial, dotted, value)  # checks the key and converts the value to the key's type
        saved, given = dotted_value(config, dotted), dotted_value(trial, dotted)
        if saved != given:
            changes.append((f"--set {dotted}", dotted, saved, given))
    return changes


def same_value(key, saved, given):
    """Whether the command line's ``given`` value of ``key`` is the one the run saved (resolved)."""
    if key in PATH_KEYS:
        return bool(saved) == bool(given) and (not given or Path(given).resolve() == Path(saved).resolve())
    if key == "augs":
        return augment.parse_augs(given) == augment.parse_augs(saved)
    if key == "pretrained":  # auto was resolved when the run began; the weights come from last.pt anyway
        return given in ("auto", saved) or Path(given).resolve() == Path(saved).resolve()
    return given == saved


def dotted_value(config, dotted):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return NOT_SET
        node = node[part]
    return node


def check_position(state, folder):
    """A last.pt written inside an epoch continues it exactly only over the same number of processes (each
    process's place is in its own shard of the epoch's order)."""
    position, world_size = state.get("position"), int(os.environ.get("WORLD_SIZE", "1"))
    if position and position["world_size"] != world_size:
        raise UserError(f"{folder / 'last.pt'} stopped inside epoch {position['epoch']} of a run of "
                        f"{position['world_size']} processes, and this is {world_size}; resume it with "
                        f"{position['world_size']}: {continue_command(folder, position['world_size'])}")


def validate_config(config):
    """Every key of a resolved config checked, before any data is read: a UserError naming the key and its range."""
    models.model_entry(config["arch"])
    split_weights(config["loss"])  # weights and options of the loss terms
    augment.parse_augs(config["augs"])
    augment.resolve_options(config["aug"])
    for key, allowed in (("optimizer", optimization.OPTIMIZERS), ("schedule", optimization.SCHEDULES)):
        if config[key] not in allowed:
            raise UserError(f"{key}={config[key]!r}: choose one of {', '.join(allowed)}")
    if config["augs_final"]:
        augment.parse_augs(config["augs_final"])
    for key in ("epochs", "batch_size", "img_size", "accumulate"):
        if config[key] < 1:
            raise UserError(f"{key}={config[key]}: must be at least 1")
    if not (config["lr"] > 0 and math.isfinite(config["lr"])):
        raise UserError(f"lr={config['lr']}: must be a positive number")
    for key, low, high in (("ema_decay", 0.0, 0.99999), ("min_lr_ratio", 0.0, 1.0), ("warmup_start", 0.0, 1.0),
                           ("onecycle_pct", 0.01, 0.99), ("warmup_epochs", 0.0, config["epochs"]),
                           ("final_epochs", 0, config["epochs"]), ("weight_decay", 0.0, math.inf),
                           ("grad_clip", 0.0, math.inf), ("momentum", 0.0, 0.999), ("gamma", 1e-6, 1.0),
                           ("workers", -1, 256), ("seed", 0, 2 ** 31), ("max_train_images", 0, math.inf),
                           ("max_val_images", 0, math.inf), ("folds", 0, 1000), ("average_top_k", 0, 1000),
                           ("checkpoint_minutes", 0.0, math.inf), ("budget_minutes", 0.0, math.inf),
                           ("pseudo_weight", 1e-6, 1e6),
                           ("pseudo_keep", 1e-6, 1.0)):
        if not (math.isfinite(config[key]) and low <= config[key] <= high):
            raise UserError(f"{key}={config[key]}: must lie in [{low}, {high}]")
    if not all(isinstance(m, (int, float)) and 0 < m <= 1 for m in config["milestones"]):
        raise UserError(f"milestones={config['milestones']}: fractions of the epochs, each in (0, 1]")
    if config["folds"] == 1 or (config["folds"] and not 0 <= config["fold"] < config["folds"]):
        raise UserError(f"--folds {config['folds']} --fold {config['fold']}: K is at least 2 and the fold lies in "
                        f"0..K-1")
    if config["fold"] and not config["folds"]:
        raise UserError(f"--fold {config['fold']} needs --folds K (the number of folds)")
    needing_pseudo = [key for key in ("pseudo_weight", "pseudo_keep") if config[key] != CONFIG_DEFAULTS[key]]
    if needing_pseudo and not config["pseudo_labels"]:
        raise UserError(f"{', '.join(needing_pseudo)} set without --pseudo-labels PRED.npz, the predictions they "
                        f"weigh: give the file, or drop {', '.join(needing_pseudo)}")
    if config["augs_final"] and not config["final_epochs"]:
        raise UserError("augs_final is set but final_epochs=0: give --set final_epochs=N, or drop augs_final")
    check_model_options(config)
    stages.check_stages(config)
    if config["schedule"] == "onecycle" and config["warmup_epochs"]:
        raise UserError("schedule=onecycle warms up by itself: set warmup_epochs=0 or use schedule=cosine")


def check_model_options(config):
    """A bad model option is one line now (``models.check_model_options``)."""
    try:
        models.check_model_options(config["arch"], config["model"])
    except ValueError as err:
        raise UserError(f"model options {config['model']} for {config['arch']}: {err}") from None


def apply_cpu_budget(config, given):
    """The laptop default: synthetic data on the CPU, a recipe made for GPUs (``short_on_cpu``), none of the
    budget's keys given -> CPU_SYNTHETIC_BUDGET."""
    if given & set(CPU_SYNTHETIC_BUDGET) or not config["short_on_cpu"]:
        return
    config.update(CPU_SYNTHETIC_BUDGET)
    log.info(f"synthetic data on the CPU: a short run ({config['img_size']} px, {config['epochs']} epochs of "
             f"{config['max_train_images']} images) that ends in minutes; give --epochs, --img-size or "
             f"--batch-size to run the recipe instead")


def is_short_run(config):
    return all(config[key] == value for key, value in CPU_SYNTHETIC_BUDGET.items())
