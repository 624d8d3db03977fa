"""The augmentations' names and options: one visible place for every option (``AUG_DEFAULTS``), overrides checked
against its keys and types (``resolve_options``)."""
import copy

from core.common import UserError

AUG_NAMES = ("flip", "scale", "rotate", "translate", "background", "occlude", "color", "blur", "noise")
TRAIN_DEFAULT_AUGS = ("rotate",)  # Schneider 2020's final recipe
BACKGROUND_KINDS = ("noise", "gradient", "shapes", "other")

# One visible place for every option; recipes override with resolve_options({...}). p = chance per sample.
AUG_DEFAULTS = {
    "flip": {"p": 0.5},                                    # mirror -> a left hand (see Policies)
    "scale": {"p": 1.0, "range": (0.85, 1.15)},            # zoom factor about the centre, uniform
    "rotate": {"p": 1.0, "max_deg": 180.0},                # uniform in [-max_deg, max_deg] (Schneider 2020)
    "translate": {"p": 1.0, "max_frac": 0.08},             # shift per axis, fraction of the input side
    "background": {"p": 0.5,                               # Reichardt 2021; needs a mask
                   "sources": {"noise": 1.0, "gradient": 1.0, "shapes": 1.0, "other": 0.0},
                   "max_images": 2000},                    # bank size cap for --backgrounds DIR
    "occlude": {"p": 0.5, "cover": (0.1, 0.4),             # fraction of the hand area covered
                "max_shapes": 6, "hand_colour": 0.3},      # chance a shape takes a colour of the hand
    "color": {"p": 0.8, "brightness": 0.15, "contrast": 0.2, "saturation": 0.2, "hue": 0.03},
    "blur": {"p": 0.2, "sigma": (0.3, 1.5)},               # Gaussian sigma in pixels
    "noise": {"p": 0.2, "std": (0.005, 0.04)},             # additive Gaussian, image in [0, 1]
}
# 'other' (another sample's background, its own hand cut out through its mask) has weight 0: on FreiHAND
# the masked image version has the green screen behind the hand, and the others carry no mask.


# --- options --------------------------------------------------------------------------------------------

def parse_augs(text):
    """'rotate,background' -> ('rotate', 'background') in pipeline order; 'none' or '' -> ()."""
    names = [n.strip().lower() for n in str(text).split(",") if n.strip()]
    if names == ["none"]:
        return ()
    if "none" in names:
        raise UserError(f"augmentations {text!r}: 'none' cannot be combined with other names")
    unknown = [n for n in names if n not in AUG_NAMES]
    if unknown:
        raise UserError(f"unknown augmentation {unknown[0]!r}; valid names: {', '.join(AUG_NAMES)} "
                        f"(comma-separated), or 'none'")
    return tuple(n for n in AUG_NAMES if n in names)


def _check_value(where, default, value):
    """``value`` converted to the type of ``default``, or a UserError naming the option."""
    is_num = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool)
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise UserError(f"augment option {where}: expected a dict, got {value!r}")
        return _merge(where, default, value)
    if isinstance(default, tuple):
        if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(map(is_num, value))
                and 0 <= value[0] <= value[1] and (value[0] > 0 or where != "scale.range")):
            raise UserError(f"augment option {where}: expected a (low, high) pair of numbers with "
                            f"0 <= low <= high, got {value!r}")
        return (float(value[0]), float(value[1]))
    if isinstance(default, int) and not isinstance(default, bool):
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise UserError(f"augment option {where}: expected a positive integer, got {value!r}")
        return value
    if not (is_num(value) and value >= 0):
        raise UserError(f"augment option {where}: expected a non-negative number, got {value!r}")
    if where.rsplit(".", 1)[-1] in ("p", "hand_colour") and value > 1:
        raise UserError(f"augment option {where}: a probability must be in [0, 1], got {value!r}")
    return float(value)


def _merge(where, defaults, overrides):
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise UserError(f"unknown augment option {where + '.' if where else ''}{unknown[0]}; valid keys: "
                        f"{', '.join(defaults)}")
    merged = copy.deepcopy(defaults)
    for key, value in overrides.items():
        merged[key] = _check_value(f"{where + '.' if where else ''}{key}", defaults[key], value)
    return merged


def resolve_options(overrides=None):
    """AUG_DEFAULTS deep-merged with ``overrides`` ({'rotate': {'max_deg': 30}, ...}); checked keys and types."""
    if overrides is None:
        return copy.deepcopy(AUG_DEFAULTS)
    if not isinstance(overrides, dict):
        raise UserError(f"augment options must be a dict of dicts, got {overrides!r}")
    return _merge("", AUG_DEFAULTS, overrides)


def forced_options(names, overrides=None):
    """Options with every named augmentation at p = 1 (preview and benchmark policy)."""
    options = resolve_options(overrides)
    for name in names:
        options[name]["p"] = 1.0
    return options
