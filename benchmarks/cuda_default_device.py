"""pytest plugin of the GPU session (``-p cuda_default_device``): tensors created without a device
go to the GPU, so the kernel tests, written for Triton's interpreter on CPU tensors, run compiled
on CUDA ones. Without a CUDA device it changes nothing (the dry run only collects)."""
import torch


def pytest_configure(config):
    if torch.cuda.is_available():
        torch.set_default_device("cuda")
