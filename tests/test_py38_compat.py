"""The on-device code runs on JetPack's Python (3.8 on JetPack 5): no 3.9+ syntax, stdlib or builtins.

Three checks per module: the 3.8 grammar (ast.parse with feature_version), vermin's minimum-version
detection (stdlib members, builtin generics in evaluated annotations, dict union, ...), and our own
scan for builtin generics such as ``list[int]`` evaluated at run time (which vermin misses when a
module has ``from __future__ import annotations``).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import List, Tuple

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "toolkit" / "resnext_deploy"
PY38 = (3, 8)

#: The on-device boundary is the layout: the package root, host/, buildfolder/, data/, evaluation/, backends/, runtime/,
#: tensorrt/ and ci/ (compile --bundle
#: writes JUnit there) run on JetPack's Python (3.8 on JetPack 5) with numpy and one backend; pipeline/, accuracy/,
#: bench/ and models/ are the workstation's. tensorrt/stage.py is the workstation half of the TensorRT package.
ON_DEVICE_FOLDERS = ("", "host", "buildfolder", "data", "evaluation", "backends", "runtime", "tensorrt", "ci")
WORKSTATION_ONLY = {"tensorrt/stage.py"}
WORKSTATION_PACKAGES = ("pipeline", "accuracy", "bench", "models")


def _on_device_modules() -> List[str]:
    found = []
    for folder in ON_DEVICE_FOLDERS:
        for path in sorted((PACKAGE / folder).glob("*.py")):
            rel = path.relative_to(PACKAGE).as_posix()
            if rel not in WORKSTATION_ONLY:
                found.append(rel)
    return found


ON_DEVICE_MODULES: List[str] = _on_device_modules()


def _imported_packages(rel: str) -> List[Tuple[int, str]]:
    """Top-level resnext_deploy subpackages a module imports, lazily or not, as (line, package)."""
    tree = ast.parse(_source(rel))
    here = ["resnext_deploy"] + list(Path(rel).parent.parts)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = base + (node.module.split(".") if node.module else [])
                names = [a.name for a in node.names]
            else:
                target = (node.module or "").split(".")
                names = [a.name for a in node.names]
            if target[0] != "resnext_deploy":
                continue
            if len(target) > 1:
                found.append((node.lineno, target[1]))
            else:
                found += [(node.lineno, n) for n in names]
    return found


_BUILTIN_GENERICS = {"list", "dict", "tuple", "set", "frozenset", "type"}


def _source(rel: str) -> str:
    path = PACKAGE / rel
    assert path.is_file(), f"{rel} is listed as on-device but does not exist"
    return path.read_text(encoding="utf-8")


def _has_future_annotations(tree: ast.Module) -> bool:
    return any(
        isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
        for n in tree.body
    )


def _runtime_builtin_generics(tree: ast.Module) -> List[Tuple[int, str]]:
    """``list[...]`` etc. in code that runs (annotations are skipped when they are not evaluated)."""
    skip = set()
    if _has_future_annotations(tree):
        for node in ast.walk(tree):
            anns = []
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                anns.append(node.returns)
                a = node.args
                anns += [x.annotation for x in a.args + a.kwonlyargs + a.posonlyargs]
                anns += [x.annotation for x in (a.vararg, a.kwarg) if x is not None]
            elif isinstance(node, ast.AnnAssign):
                anns.append(node.annotation)
            for ann in anns:
                if ann is not None:
                    skip.update(id(n) for n in ast.walk(ann))
    return [
        (node.lineno, node.value.id)
        for node in ast.walk(tree)
        if isinstance(node, ast.Subscript) and id(node) not in skip
        and isinstance(node.value, ast.Name) and node.value.id in _BUILTIN_GENERICS
    ]


@pytest.mark.parametrize("rel", ON_DEVICE_MODULES)
def test_parses_with_the_python38_grammar(rel):
    ast.parse(_source(rel), filename=rel, feature_version=PY38)


@pytest.mark.parametrize("rel", ON_DEVICE_MODULES)
def test_no_builtin_generics_evaluated_at_run_time(rel):
    found = _runtime_builtin_generics(ast.parse(_source(rel)))
    assert not found, f"{rel}: {found} need Python 3.9; use typing.List/Dict/Tuple"


@pytest.mark.parametrize("rel", ON_DEVICE_MODULES)
def test_vermin_minimum_version_is_at_most_38(rel):
    vermin = pytest.importorskip("vermin", reason="pip install 'resnext-deploy[test]' (vermin)")
    src = _source(rel)
    config = vermin.Config()
    # Annotations are code only without the __future__ import; vermin should then judge them too.
    config.set_eval_annotations(not _has_future_annotations(ast.parse(src)))
    visitor = vermin.visit(src, config, str(PACKAGE / rel))
    minimum = visitor.minimum_versions()[1]
    assert minimum is not None and tuple(minimum) <= PY38, (
        f"{rel} needs Python {minimum}:\n{visitor.output_text()}"
    )


def test_the_boundary_is_drawn_from_the_layout():
    assert "runtime/classifier.py" in ON_DEVICE_MODULES and "tensorrt/ondevice.py" in ON_DEVICE_MODULES
    assert "tensorrt/stage.py" not in ON_DEVICE_MODULES and not any(m.startswith("pipeline/") for m in ON_DEVICE_MODULES)


@pytest.mark.parametrize("rel", [m for m in ON_DEVICE_MODULES if m not in ("cli.py", "demo.py", "standin.py")])
def test_on_device_modules_import_nothing_from_the_workstation_packages(rel):
    """cli.py dispatches to both halves lazily, demo.py and standin.py train (lazily); every other on-device module
    stays on its side."""
    bad = [(line, pkg) for line, pkg in _imported_packages(rel) if pkg in WORKSTATION_PACKAGES]
    assert not bad, f"{rel} imports workstation packages at {bad}: the device has no torch, onnx or pipeline/"


def test_the_checks_catch_39_only_code():
    """The checks above are not vacuous: each rejects a 3.9+ construct."""
    vermin = pytest.importorskip("vermin", reason="pip install 'resnext-deploy[test]' (vermin)")
    with pytest.raises(SyntaxError):
        ast.parse("with (open('a') as f, open('b') as g):\n    pass\n", feature_version=PY38)
    with pytest.raises(SyntaxError):
        ast.parse("match x:\n    case 1:\n        pass\n", feature_version=PY38)
    for src in ("import functools\n@functools.cache\ndef f(): pass\n", "a = {}\nb = a | {}\n",
                "from importlib.resources import files\n", "import zoneinfo\n"):
        assert tuple(vermin.detect(src, vermin.Config())[1]) > PY38, src
    future = "from __future__ import annotations\nfrom typing import Any\n"
    assert _runtime_builtin_generics(ast.parse(future + "X = list[int]\n")) == [(3, "list")]
    assert _runtime_builtin_generics(ast.parse(future + "def f(x: list[int]) -> dict[str, Any]: ...\n")) == []
    assert _runtime_builtin_generics(ast.parse("def f(x: list[int]): ...\n")) == [(1, "list")]

