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
