import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """The evaluation tests train tiny models: with several intra-op threads on a busy machine, thread
    hand-offs cost far more than they save (a fine-tuning test took 15 s on 2 threads, 0.5 s on 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
