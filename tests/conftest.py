import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """The suite's models and batches are tiny: one thread is fastest, and on a shared 2-core runner spinning
    OpenMP threads stall each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
