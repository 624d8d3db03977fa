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
