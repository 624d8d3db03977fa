"""Datasets: FreiHAND v2 and MP21 readers, the torch Dataset, joint orders and the synthetic default."""
import shutil
from pathlib import Path

from core.common import DEFAULT_DATA_ROOT, PROJECT_ROOT, SYNTHETIC_ROOT, UserError
from data.readers import FREIHAND_HINT, detect_layout

# The embedded default: generated into SYNTHETIC_ROOT on first use when no dataset is at DEFAULT_DATA_ROOT.
# Each training hand in two image versions (FreiHAND v2 has four), so an epoch shows every hand twice.
SYNTHETIC_DEFAULT = {"n_train": 2000, "n_eval": 200, "seed": 0, "size": 224, "versions": 2}


def _shown(path):
    path = Path(path).resolve()
    return path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path


def resolve_data_root(data_root=None, announce=print):
    """The dataset folder to use. Given explicitly, it must hold a dataset. Otherwise DEFAULT_DATA_ROOT when
    it holds one, else the synthetic set (generated once, then reused), announced in one line."""
    if data_root is not None:
        root = Path(data_root)
        if detect_layout(root) is None:
            raise UserError(f"no dataset at {root}: {FREIHAND_HINT}; or leave out --data-root to use the "
                            f"synthetic set")
        return root
    if detect_layout(DEFAULT_DATA_ROOT) is not None:
        return DEFAULT_DATA_ROOT
    from data import synthetic
    d = SYNTHETIC_DEFAULT
    if detect_layout(SYNTHETIC_ROOT) is not None:
        if synthetic.read_settings(SYNTHETIC_ROOT) == synthetic.settings(**d):
            announce(f"no dataset in {_shown(DEFAULT_DATA_ROOT)}/: using the synthetic set in "
                     f"{_shown(SYNTHETIC_ROOT)}/")
            return SYNTHETIC_ROOT
        announce(f"the synthetic set in {_shown(SYNTHETIC_ROOT)}/ was made by another version of the generator or "
                 f"with other settings: deleting it to make the current one")
        shutil.rmtree(SYNTHETIC_ROOT)
    announce(f"no dataset in {_shown(DEFAULT_DATA_ROOT)}/: generating the synthetic set once in "
             f"{_shown(SYNTHETIC_ROOT)}/ ({d['n_train']} training hands x {d['versions']} image versions, "
             f"{d['n_eval']} evaluation hands, {d['size']} px)")
    synthetic.generate(SYNTHETIC_ROOT, **d)
    return SYNTHETIC_ROOT
