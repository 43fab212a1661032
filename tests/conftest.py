"""Test configuration and every fixture of the test suite. TRITON_INTERPRET must be set before any
kernel module is imported (Triton reads it when ``@triton.jit`` decorates), so kernel tests run
on the CPU through the interpreter."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import helpers  # noqa: E402


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
def single_thread():
    """One intra-op thread for a module of tiny-tensor tests (``pytestmark = pytest.mark.usefixtures(
    "single_thread")``): they launch thousands of ops on a few hundred elements each, where worker
    threads buy nothing and, on a busy machine, their spin-waiting costs several times the work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def poisoned():
    """NaN-poisoned allocations for the whole test (``helpers.poisoned_allocations``)."""
    with helpers.poisoned_allocations():
        yield


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """Run directory of a tiny XSwin trained for 4 steps on the digits, one per test process: the
    tests read it, sample and evaluate it into their own folders, and may add evaluate.py's
    reference-image cache (its eval/reference)."""
    from helpers import train_tiny_digits

    return train_tiny_digits(tmp_path_factory.mktemp("runs") / "digits")
