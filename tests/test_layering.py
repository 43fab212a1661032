"""Layering of the package: kernels -> ops -> layers -> models -> (data, diffusion, checkpoints,
sampling, evaluation, ...) -> runs -> cli. A module may import only from its own layer or below,
function-local imports included."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "xswin_fast"

# module (a file or a sub-package of xswin_fast) -> the xswin_fast modules it must never import
LIBRARY = ["data", "objectives", "checkpoints", "vae", "images", "compat", "text",
           "evaluation", "dit_formats", "pipelines"]
FORBIDDEN = {
    **{name: ["runs", "cli"] for name in LIBRARY},
    "runs": ["cli"],
    "ops": LIBRARY + ["layers", "models", "runs", "cli"],
    "layers": LIBRARY + ["models", "runs", "cli"],
    "models": LIBRARY + ["runs", "cli"],
}


def _imported_modules(path: Path):
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    package = ["xswin_fast", *path.relative_to(PACKAGE).parent.parts]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            yield module
            yield from (f"{module}.{a.name}" for a in node.names)  # "from .. import runs"


def _sources(name: str):
    target = PACKAGE / name
    return sorted(target.rglob("*.py")) if target.is_dir() else [target.with_suffix(".py")]


@pytest.mark.parametrize("name", sorted(FORBIDDEN))
def test_no_upward_imports(name):
    sources = _sources(name)
    assert sources and all(p.is_file() for p in sources), name
    bad = []
    for path in sources:
        for module in _imported_modules(path):
            for upper in FORBIDDEN[name]:
                if module == f"xswin_fast.{upper}" or module.startswith(f"xswin_fast.{upper}."):
                    bad.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_relative_and_local_imports(tmp_path, monkeypatch):
    fake = tmp_path / "xswin_fast"
    (fake / "evaluation").mkdir(parents=True)
    (fake / "evaluation" / "bad.py").write_text("def f():\n    from ..runs.trainer import Trainer\n")
    monkeypatch.setitem(globals(), "PACKAGE", fake)
    assert "xswin_fast.runs.trainer" in set(_imported_modules(fake / "evaluation" / "bad.py"))
    with pytest.raises(AssertionError, match="imports xswin_fast.runs"):
        test_no_upward_imports("evaluation")


def test_kernels_know_nothing_of_the_package():
    """kernels/ (installed as xswin_fast.kernels) imports torch, triton and itself only."""
    kernels = PACKAGE.parent / "kernels"
    bad = []
    for path in sorted(kernels.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level:
                if node.level > 1:
                    bad.append(f"kernels/{path.name} imports from outside kernels/ ({'.' * node.level}{node.module})")
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                bad += [f"kernels/{path.name} imports {n}" for n in names if n.split(".")[0] in ("xswin_fast", "kernels")]
    assert not bad, "\n".join(bad)
