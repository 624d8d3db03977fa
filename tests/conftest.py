import signal

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` are skipped, not failed, where no GPU is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """The suite's models and batches are tiny: one thread is fastest, and on a shared 2-core runner spinning
    OpenMP threads stall each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def hand_set(tmp_path_factory):
    """A tiny synthetic set (FreiHAND layout, 64 px): 2 training and 12 labelled evaluation hands, real hand shapes
    for the tests that recognise a joint order from the bones (the marker sets' joints are random points)."""
    from data import synthetic
    return synthetic.generate(tmp_path_factory.mktemp("hand_set") / "set", 2, 12, seed=4, size=64, workers=1)


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
