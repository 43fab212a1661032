"""The import trap of the name ``kernels``: the repository's ``kernels/`` folder against the PyPI
package of that name.

transformers 5 depends on Hugging Face's ``kernels`` package and imports it whenever it is
installed, and diffusers imports transformers when it is installed (the ``text`` and ``test``
extras install it). A script run from the repository root (``python train.py``,
``python -m pytest``) has the root on ``sys.path`` ahead of site-packages, so ``import kernels``
would find this repository's ``kernels/`` folder (the source of ``xswin_fast.kernels``) and
transformers would fail on it. :func:`import_installed_kernels` imports the installed package
first, with the root left out of the search path for that one import, so that ``sys.modules``
holds the right module for everyone after it. Nothing happens when the package is not installed
or nothing shadows it.
"""
import importlib.metadata
import importlib.util
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _is_root(entry: str) -> bool:
    return os.path.abspath(entry or os.curdir) == _ROOT


def import_installed_kernels() -> None:
    """Import the installed ``kernels`` distribution if the repository's folder would shadow it."""
    if "kernels" in sys.modules or not any(_is_root(p) for p in sys.path):
        return
    try:
        importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        return
    spec = importlib.util.find_spec("kernels")
    if spec is None or spec.origin is None or os.path.dirname(os.path.abspath(spec.origin)) != os.path.join(_ROOT, "kernels"):
        return
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if not _is_root(p)]
    try:
        importlib.import_module("kernels")
    finally:
        sys.path[:] = saved
