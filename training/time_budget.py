"""A run's time budget (``config['budget_minutes']``, ``train.py --budget-minutes``): before the first step, the
trainer's step (augmentation, forward, backward, optimiser, EMA) and a validation batch are timed at every stage's
input size on a copy of the model; when the run's epochs would take longer than the budget on this machine, it
trains as many as fit, its stages keeping their fractions and its schedule its shape; the first stage's epochs'
real time then corrects the plan, and inside the last stage its own epochs' (``replan``). The epochs are never raised,
so on a machine fast enough the run is the recipe's own, to the bit (the timing trains copies, and every epoch
seeds its own random streams)."""
import copy
import math
import statistics

from core.common import UserError, median_seconds
from core.device import synchronizer
from core.messages import logger
from core.precision import choose
from data.loader import to_device
from prediction.inference import predict_batch
from training import optimization
from training import stages
from training.step import forward_loss, optimizer_step

log = logger(__name__)

TIMED_STEPS, WARMUP_STEPS = 3, 1  # the first step builds kernels and buffers: untimed
TIME_SHARE = 0.95  # of the budget, for the timed work; the rest loads images and writes checkpoints


def epochs_share_seconds(config):
    """The seconds of ``budget_minutes`` the epochs may take, its ``TIME_SHARE``: for the plan and the deadline."""
    return TIME_SHARE * 60 * config["budget_minutes"]


def epoch_seconds(config, model, inputs, device, size):
    """Seconds of one epoch at input ``size`` on this machine: its batches' timed training steps (on a copy of
    ``model`` with its own optimiser and EMA) and its validation batches' timed predictions."""
    inputs.use(size)
    batch = to_device(next(iter(inputs.train_loader)), device)
    trained = copy.deepcopy(model).train()
    optimizer, ema = optimization.make_optimizer(trained, config), optimization.make_ema(trained, config)
    scaler = choose(device, config["amp"], config["cpu_bf16"]).grad_scaler()
    sync = synchronizer(device)

    def step():
        loss, _ = forward_loss(trained, inputs.augmenter(batch), config, device, config["channels_last"])
        scaler.scale(loss).backward()
        optimizer_step(trained, optimizer, scaler, config["grad_clip"], ema=ema, steps_done=1)

    train = median_seconds(step, TIMED_STEPS, WARMUP_STEPS, sync)
    images = to_device(next(iter(inputs.val_loader)), device)["image"]
    trained.eval()
    val = median_seconds(lambda: predict_batch(trained, images, 1, config["amp"], config["channels_last"]),
                         TIMED_STEPS, WARMUP_STEPS, sync)
    return train * len(inputs.train_loader) + val * len(inputs.val_loader)


def predicted_seconds(config, epochs, seconds_at):
    """Seconds of a run of ``epochs`` with ``config``'s stages, given each size's seconds per epoch."""
    plan = stages.plan({**config, "epochs": epochs})
    return sum((stage.last_epoch - stage.first_epoch + 1) * seconds_at[stage.img_size] for stage in plan)


def keeps_shape(config, epochs, done=0):
    """Whether a run of ``epochs`` is no shorter than its warm-up and final epochs and its first stage holds the
    ``done`` epochs (and at least one)."""
    return stages.plan({**config, "epochs": epochs})[0].last_epoch >= max(done, 1) and \
        epochs >= max(config["warmup_epochs"], config["final_epochs"])


def fitting_epochs(config, seconds_at, done=0):
    """The most epochs, up to ``config['epochs']``, whose predicted seconds fit the budget's share and that keep
    the shape (``keeps_shape``), or 0."""
    budget = epochs_share_seconds(config)
    return next((epochs for epochs in range(config["epochs"], max(done, 1) - 1, -1)
                 if predicted_seconds(config, epochs, seconds_at) <= budget and keeps_shape(config, epochs, done)), 0)


def fit_to_budget(config, model, inputs, device):
    """Time an epoch at every stage's size, then set ``config['epochs']`` to the most that fit
    ``config['budget_minutes']`` (a UserError when not even the shortest run does); the inputs are left at the
    first stage's size."""
    sizes = dict.fromkeys(stage.img_size for stage in stages.plan(config))
    seconds_at = {size: epoch_seconds(config, model, inputs, device, size) for size in sizes}
    inputs.use(stages.plan(config)[0].img_size)
    asked = config["epochs"]
    epochs = fitting_epochs(config, seconds_at)
    per_epoch = ", ".join(f"{s:.0f} s an epoch at {size} px" for size, s in seconds_at.items())
    if not epochs:
        raise UserError(f"budget_minutes={config['budget_minutes']:g}: not even the shortest run of these stages fits "
                        f"on this machine ({per_epoch}); give more --budget-minutes, or 0 to train every epoch")
    config["epochs"], config["epochs_asked"] = epochs, asked  # config.json keeps both: the same command resumes
    config["budget_epoch_seconds"] = {str(size): s for size, s in seconds_at.items()}  # JSON keys: strings
    minutes = predicted_seconds(config, epochs, seconds_at) / 60
    if epochs < asked:
        log.info(f"time budget of {config['budget_minutes']:g} min: {asked} epochs would take "
                 f"{predicted_seconds(config, asked, seconds_at) / 60:.0f} min on this machine ({per_epoch}); "
                 f"training {epochs} epochs ({stages.describe_sizes(config)}), about {minutes:.0f} min; "
                 f"--budget-minutes 0 trains all {asked}")
    else:
        log.info(f"time budget of {config['budget_minutes']:g} min: the {epochs} epochs take about "
                 f"{minutes:.0f} min on this machine ({per_epoch})")



def scaled_seconds(config, seconds, size):
    """{size: seconds of an epoch}: the timing before the first step, scaled so that an epoch at ``size`` takes
    the ``seconds`` one really took."""
    timed = {int(key): s for key, s in config["budget_epoch_seconds"].items()}  # JSON keys: strings
    return {key: s * seconds / timed[size] for key, s in timed.items()}


def budgeted(config):
    """Whether the run follows a time budget now (a run resumed with --budget-minutes 0 does not)."""
    return bool(config["budget_minutes"] and config.get("budget_epoch_seconds"))


def fix_stages(config):
    """When a budgeted run of several stages enters its last: ``config['stage_starts']`` fixes where every stage
    begins ([[first epoch, img_size], ...], ``stages.plan``), so a re-plan inside the last stage moves its end
    alone. Every process does it at the same epoch, from the epochs they share. Returns whether it did now."""
    plan = stages.plan(config)
    if not budgeted(config) or len(plan) < 2 or "stage_starts" in config:
        return False
    config["stage_starts"] = [[stage.first_epoch, stage.img_size] for stage in plan]
    return True


def replan(config, history):
    """After each epoch of a budgeted run's first stage (``history``: the log's rows so far): scale the timed seconds
    of every size by the first-stage epochs' median real seconds over their timed ones, and set
    ``config['epochs']`` to the most of those asked that fit, the epochs done kept in the first stage (when none
    fits, the fewest that keep them). The timing before the first step takes seconds, so a busy moment (another
    program starting) can mis-time it by times over; an epoch is a steadier clock. Inside the last stage of
    several, its own epochs' real time re-plans its end (``replan_last_stage``). The cosine and multistep
    schedules follow the new epochs; OneCycleLR fixes its steps when it is made, so its runs keep the first plan.
    Returns whether the epochs changed."""
    plan, done = stages.plan(config), len(history)
    first, last = plan[0], plan[-1]
    if not budgeted(config) or config["schedule"] == "onecycle":  # budget 0: a run resumed without its budget
        return False
    if done > first.last_epoch:  # in a middle stage nothing moves; fix_stages marks the last one's start
        return "stage_starts" in config and replan_last_stage(config, history, last)
    # the median of the epochs so far, all in the first stage: the first epochs carry one-off costs, a busy moment
    # slows any one epoch, and the fastest of a few flatters the rest of the run
    real = statistics.median(row["epoch_seconds"] for row in history)
    seconds_at = scaled_seconds(config, real, first.img_size)
    asked = {**config, "epochs": config["epochs_asked"]}
    epochs = fitting_epochs(asked, seconds_at, done) or next(
        (epochs for epochs in range(done, asked["epochs"] + 1) if keeps_shape(asked, epochs, done)), config["epochs"])
    if epochs != config["epochs"]:
        config["epochs"] = epochs
        timed = config["budget_epoch_seconds"][str(first.img_size)]
        median = f" (the median of {done})" if done > 1 else ""
        log.info(f"time budget: an epoch at {first.img_size} px took {real:.0f} s{median}, timed at {timed:.0f} s: "
                 f"training {epochs} epochs ({stages.describe_sizes(config)}), about "
                 f"{predicted_seconds(config, epochs, seconds_at) / 60:.0f} min in all")
        return True
    return False


def replan_last_stage(config, history, last):
    """Inside the last stage: its epochs' median real seconds so far (the timing before the first step reads a
    later size's epoch 10-20 % off) into the time the budget's share has left sets ``config['epochs']``, no more
    than those asked; its first epoch stays. Returns whether the epochs changed."""
    done, spent = len(history), sum(row["epoch_seconds"] for row in history)
    seconds = statistics.median(row["epoch_seconds"] for row in history[last.first_epoch - 1:])
    more = max(0, math.floor((epochs_share_seconds(config) - spent) / seconds))
    epochs = max(min(config["epochs_asked"], done + more), config["final_epochs"])
    if epochs == config["epochs"]:
        return False
    config["epochs"] = epochs
    in_stage = done - last.first_epoch + 1
    median = f" (the median of {in_stage})" if in_stage > 1 else ""
    minutes = (spent + (epochs - done) * seconds) / 60
    log.info(f"time budget: an epoch at {last.img_size} px took {seconds:.0f} s{median}: training {epochs} epochs "
             f"({stages.describe_sizes(config)}), about {minutes:.0f} min in all")
    return True


def past_deadline(config, history):
    """Whether a budgeted run should end now: the epochs so far (``history``, a resumed run's included) and the next,
    at its size (the latest epoch's seconds there, else its timing scaled as the latest epoch ran), would end past
    the epochs' share of ``budget_minutes`` (``TIME_SHARE``, as planned: the rest starts and ends the run). The
    backstop for epochs slower than planned (a busy machine, a slower stage than timed)."""
    done = len(history)
    if not budgeted(config) or not history or done >= config["epochs"]:
        return False
    size = stages.stage_at(config, done + 1).img_size
    seen = [row["epoch_seconds"] for row in history if row["img_size"] == size]
    latest = history[-1]
    upcoming = seen[-1] if seen else scaled_seconds(config, latest["epoch_seconds"], latest["img_size"])[size]
    return sum(row["epoch_seconds"] for row in history) + upcoming > epochs_share_seconds(config)
