import os

import pytest
import torch

# Deterministic, modest thread use: CI machines have 2 cores.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny():
    from leanlm import load

    return load("tiny-llama", dtype="fp32")
