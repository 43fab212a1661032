"""The one place where the torchvision import trap is handled.

PyPI's ``torchvision==0.28.0`` is a CUDA build. Installed next to the CPU-only torch wheel, its
C++ extension cannot load, and ``import torchvision`` dies on an unguarded
``register_fake("torchvision::nms")``. That breaks ``import torch_fidelity`` and even
``from diffusers import AutoencoderKL`` (diffusers reaches ``torchvision.transforms``).
Declaring the two op schemas before the first torchvision import lets it import; only its C++
ops (``nms``, ``torchvision.io`` codecs) stay unavailable, and nothing here uses them.

The shim is applied only when all of these hold: torch is a CPU build, torchvision is installed
but not imported yet, it is a CUDA build (read from its ``version.py`` without importing it), and
the schemas are not registered already. Every module that imports diffusers or torch_fidelity
calls :func:`ensure_torchvision_importable` first.
"""
import importlib.util
import os
import re
import sys

import torch

_LIBRARY = None  # keeps the schema fragment alive (a collected torch.library.Library unregisters)


def _torchvision_is_cuda_build(spec) -> bool:
    origin = spec.origin or ""
    path = os.path.join(os.path.dirname(origin), "version.py")
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return False
    m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", text)
    return bool(m and "+cu" in m.group(1))


def torchvision_shim_needed() -> bool:
    if "torchvision" in sys.modules or torch.version.cuda is not None:
        return False
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not _torchvision_is_cuda_build(spec):
        return False
    return not hasattr(torch.ops.torchvision, "nms")


def ensure_torchvision_importable() -> bool:
    """Apply the op-schema shim if (and only if) it is needed; return whether it was applied."""
    global _LIBRARY
    if not torchvision_shim_needed():
        return False
    lib = torch.library.Library("torchvision", "FRAGMENT")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY = lib
    return True
