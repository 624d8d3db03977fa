import logging
import os
import shutil
import signal

import pytest
import torch

from core import locations, messages
from tests.markers import write_marker_dataset
from tests.scripts import make_synthetic_set


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` are skipped, not failed, where no GPU is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def write_locations_outside_the_project(tmp_path_factory):
    """Every root the project writes (core.locations) in this session's temporary folder, for the tests and the
    scripts they start: the suite leaves the checkout as it found it, and tests running side by side never meet in
    its data/cache/ or runs/. A test of the defaults removes the variables itself."""
    base = tmp_path_factory.mktemp("write_locations")
    for location in locations.LOCATIONS.values():
        os.environ[location.env] = str(base / location.kind)
    yield
    for location in locations.LOCATIONS.values():
        os.environ.pop(location.env, None)


@pytest.fixture(autouse=True)
def write_locations_kept():
    """A script's --cache-dir, --runs-dir, --submissions-dir or --synthetic-dir becomes its variable for the process
    (core.locations.apply_flags): set back after each test, so no test moves another's roots."""
    kept = {key: value for key, value in os.environ.items() if key.startswith("HANDPOSE_")}
    yield
    for key in [key for key in os.environ if key.startswith("HANDPOSE_")]:
        if key not in kept:
            del os.environ[key]
    os.environ.update(kept)


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """The suite's models and batches are tiny: one thread is fastest, and on a shared 2-core runner spinning
    OpenMP threads stall each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- data sets, made once per session and shared: read-only by convention (a test that changes one changes a copy) ---

@pytest.fixture(scope="session")
def marker_set(tmp_path_factory):
    """FreiHAND-layout marker data at 224 px: 4 training hands, 3 labelled evaluation hands with *_scale.json."""
    return write_marker_dataset(tmp_path_factory.mktemp("marker_set"), n=4, n_eval=3, seed=5)


@pytest.fixture(scope="session")
def marker_set_12(tmp_path_factory):
    """FreiHAND-layout marker data at 224 px: 12 training hands (all with masks), 3 labelled evaluation hands."""
    return write_marker_dataset(tmp_path_factory.mktemp("marker_set_12"), n=12, seed=11)


@pytest.fixture(scope="session")
def marker_set_2_versions(tmp_path_factory):
    """FreiHAND-layout marker data at 224 px: 6 training hands in 2 versions (12 images, the first 6 with masks)."""
    return write_marker_dataset(tmp_path_factory.mktemp("marker_set_2_versions"), n=6, versions=2, seed=3)


@pytest.fixture(scope="session")
def synthetic_64(tmp_path_factory):
    """A synthetic set made by the generator's command line at 64 px: 16 training and 6 evaluation hands."""
    return make_synthetic_set(tmp_path_factory.mktemp("synthetic_64") / "data", 16, 6, seed=11, size=64)


@pytest.fixture(scope="session")
def synthetic_96(tmp_path_factory):
    """A synthetic set made by the generator's command line at 96 px: 40 training (38 after the validation split)
    and 8 evaluation hands."""
    return make_synthetic_set(tmp_path_factory.mktemp("synthetic_96") / "data", 40, 8, seed=3, size=96)


@pytest.fixture(scope="session")
def hand_set(tmp_path_factory):
    """A tiny synthetic set (FreiHAND layout, 64 px): 2 training and 12 labelled evaluation hands, real hand shapes
    for the tests that recognise a joint order from the bones (the marker sets' joints are random points)."""
    from data import synthetic
    return synthetic.generate(tmp_path_factory.mktemp("hand_set") / "set", 2, 12, seed=4, size=64, workers=1)


@pytest.fixture(scope="session")
def exported(marker_set, tmp_path_factory):
    """A small hourglass's checkpoint trained on nothing (its BN statistics moved off their reset values), exported
    to ONNX beside it by predict.py --export onnx."""
    import predict
    from models.checkpoints import load_checkpoint
    from tests.checkpoints import TINY_HOURGLASS, write_checkpoint
    from training.checkpoints import save_checkpoint
    ckpt = write_checkpoint(tmp_path_factory.mktemp("runs") / "hg" / "best.pt", "hourglass_attn", marker_set,
                            model=TINY_HOURGLASS)
    state = load_checkpoint(ckpt)
    torch.manual_seed(1)
    state["model"] = {k: v + 0.05 * torch.randn_like(v) if k.endswith("running_mean") else v
                      for k, v in state["model"].items()}                          # not a freshly reset BN
    save_checkpoint(state, ckpt)
    predict.main(["--ckpt", str(ckpt), "--export", "onnx", "--data-root", str(marker_set)])
    return ckpt


@pytest.fixture
def copy_of(tmp_path):
    """copy_of(shared data set) -> a private copy in this test's folder, for a test that changes its files."""
    def copy(root):
        return shutil.copytree(root, tmp_path / "data_copy")
    return copy


@pytest.fixture
def terminal_stop_signals():
    """For a test that signals its own process: Ctrl-C raises KeyboardInterrupt and SIGTERM is at its default while
    it runs, as in a terminal's foreground job, however the suite was started (a script's background job starts
    with SIGINT ignored, which the trainer rightly keeps); both set back afterwards."""
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for signum, handler in previous.items():
        if handler is not None:  # None: set outside Python, cannot be set back from here
            signal.signal(signum, handler)


@pytest.fixture
def said(caplog):
    """said() -> the project's messages (core.messages) so far in this test, info and up, one string each."""
    caplog.set_level(logging.INFO, logger=messages.ROOT)
    return lambda: [record.getMessage() for record in caplog.records if record.name.startswith(messages.ROOT)]
