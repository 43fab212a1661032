"""Test configuration. TRITON_INTERPRET must be set before any kernel module is imported (Triton
reads it when ``@triton.jit`` decorates), so kernel tests run on the CPU through the interpreter."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _restore_threads():
    # train.py --threads changes the process-wide setting
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """Run directory of a tiny XSwin trained for 4 steps on the digits (one per test module)."""
    from tiny_run import train_tiny_digits

    return train_tiny_digits(tmp_path_factory.mktemp("runs") / "digits")
