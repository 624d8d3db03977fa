"""Datasets: FreiHAND v2 and MP21 readers, the torch Dataset, joint orders and the synthetic default."""
import shutil
from pathlib import Path

from core import locations
from core.common import DEFAULT_DATA_ROOT, UserError, shown
from core.messages import logger
from data.readers import FREIHAND_HINT, detect_layout

log = logger(__name__)

# The embedded default: generated into the synthetic root (core.locations) on first use when no dataset is at
# DEFAULT_DATA_ROOT.
# Each training hand in two image versions (FreiHAND v2 has four), so an epoch shows every hand twice.
SYNTHETIC_DEFAULT = {"n_train": 2000, "n_eval": 200, "seed": 0, "size": 224, "versions": 2}


def _found_data_root(data_root):
    """``data_root`` when given (it must hold a dataset); else DEFAULT_DATA_ROOT when it holds one, else the
    synthetic set when this version of the generator made it with SYNTHETIC_DEFAULT (announced); else None."""
    if data_root is not None:
        root = Path(data_root)
        if detect_layout(root) is None:
            raise UserError(f"no dataset at {root}: {FREIHAND_HINT}; or leave out --data-root to use the "
                            f"synthetic set")
        return root
    if detect_layout(DEFAULT_DATA_ROOT) is not None:
        return DEFAULT_DATA_ROOT
    from data import synthetic
    synthetic_root = locations.root("synthetic")
    if (detect_layout(synthetic_root) is not None
            and synthetic.read_settings(synthetic_root) == synthetic.settings(**SYNTHETIC_DEFAULT)):
        log.info(f"no dataset in {shown(DEFAULT_DATA_ROOT)}/: using the synthetic set in {shown(synthetic_root)}/")
        return synthetic_root
    return None


def existing_data_root(data_root=None):
    """The dataset folder to read, as ``resolve_or_generate_data_root`` finds it, but never made or deleted: when
    it would generate the synthetic set, a UserError."""
    root = _found_data_root(data_root)
    if root is None:
        raise UserError(f"no dataset in {shown(DEFAULT_DATA_ROOT)}/ and no current synthetic set in "
                        f"{shown(locations.root('synthetic'))}/: pass --data-root")
    return root


def resolve_or_generate_data_root(data_root=None):
    """The dataset folder to use. Given explicitly, it must hold a dataset. Otherwise DEFAULT_DATA_ROOT when
    it holds one, else the synthetic set: generated once, then reused; one made by another version of the
    generator or with other settings is deleted and generated again. Announced in one line."""
    root = _found_data_root(data_root)
    if root is not None:
        return root
    from data import synthetic
    d, synthetic_root = SYNTHETIC_DEFAULT, locations.root("synthetic")
    if detect_layout(synthetic_root) is not None:
        log.info(f"the synthetic set in {shown(synthetic_root)}/ was made by another version of the generator or "
                 f"with other settings: deleting it to make the current one")
        shutil.rmtree(synthetic_root)
    log.info(f"no dataset in {shown(DEFAULT_DATA_ROOT)}/: generating the synthetic set once in "
             f"{shown(synthetic_root)}/ ({d['n_train']} training hands x {d['versions']} image versions, "
             f"{d['n_eval']} evaluation hands, {d['size']} px)")
    synthetic.generate(synthetic_root, **d)
    return synthetic_root
