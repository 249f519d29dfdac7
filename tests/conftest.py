import os

import pytest
import torch

# Deterministic, modest thread use: CI machines have 2 cores.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny():
    from leanlm import load

    return load("tiny-llama", dtype="fp32")


@pytest.fixture
def one_thread():
    """torch at one thread for the test: many small ops run faster so, and runs compare bit for bit with
    processes started at OMP_NUM_THREADS=1."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
