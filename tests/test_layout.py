"""The house rules the layout keeps: no import circles, no private names across modules, no backend-name branches.

These read the source (ast and regular expressions), so they hold for code paths no other test runs.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "toolkit" / "resnext_deploy"
#: the plug-ins themselves may know their own names
BACKEND_HOMES = ("backends/", "tensorrt/")


#: The layer order, lowest first: a package imports only from its own layer's modules or from lower layers,
#: never back up (cli and __main__ sit on top of everything). Ground-floor modules count as packages of one.
LAYERS = (
    ("errors", "names", "optional", "progress", "preprocess", "host"),  # stdlib + numpy/Pillow; names = escaping for display; host = CPU facts and load
    ("buildfolder", "data"),  # artifacts, manifest, sidecars; image folders and shipped data
    ("backends", "recipes"),  # the backend interface and ORT/OpenVINO; recipes read the backends' defaults
    ("evaluation",),  # metrics, latency and the gate
    ("models", "report", "runtime", "scale", "ci"),  # model families and demos; report pages; the deployable runtime
    ("pipeline",),  # the workstation stages and the build
    ("accuracy", "tensorrt"),  # studies over the pipeline; TensorRT's workstation half runs pipeline steps
    ("bench",),
    ("cli", "__main__"),
)
#: Two-way package pairs left in files other branches are rewriting: each entry goes when that branch lands.
KNOWN_TWO_WAY = {
    # pipeline/commands.py's ONNX check calls tensorrt.qdq_rules: removed when formats' branch lands
    ("pipeline", "tensorrt"),
}


def _modules() -> dict:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _imports(name: str, path: Path, mods: dict):
    """(line, imported package module) for every import of ours in a module: relative, absolute, and lazy ones
    (inside functions) alike, since ast.walk sees every statement."""
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        for t in targets:
            while t not in mods and "." in t:
                t = t.rsplit(".", 1)[0]
            if t in mods and t.startswith("resnext_deploy"):
                yield node.lineno, t


def _import_graph() -> dict:
    """module -> the package modules it imports (module level or lazily, relative or absolute), from the source."""
    mods = _modules()
    return {name: {t for _, t in _imports(name, path, mods) if t != name} for name, path in mods.items()}


def _package(module: str) -> str:
    """The top-level package of a module (a ground-floor module is its own); the root package is ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _package_edges() -> dict:
    """(importing package, imported package) -> where, for imports that cross packages."""
    mods = _modules()
    edges: dict = {}
    for name, path in mods.items():
        for line, target in _imports(name, path, mods):
            a, b = _package(name), _package(target)
            if a and b and a != b:
                edges.setdefault((a, b), []).append(f"{path.relative_to(PACKAGE).as_posix()}:{line}")
    return edges


def test_no_two_way_package_pair():
    """No two packages import each other (through any import: module level, lazy, relative or absolute)."""
    edges = _package_edges()
    pairs = {tuple(sorted(k)) for k in edges if (k[1], k[0]) in edges}
    bad = sorted(pairs - KNOWN_TWO_WAY)
    detail = [f"{a} <-> {b}: {edges[(a, b)][:3]} / {edges[(b, a)][:3]}" for a, b in bad]
    assert not bad, "packages importing each other:\n" + "\n".join(detail)
    assert not KNOWN_TWO_WAY - pairs, f"allow-listed pairs that are gone (delete them): {KNOWN_TWO_WAY - pairs}"


def test_packages_import_only_down_the_layer_order():
    """Every package and ground-floor module is in LAYERS, and imports only from its layer or below."""
    rank = {p: i for i, layer in enumerate(LAYERS) for p in layer}
    present = {_package(m) for m in _modules()} - {""}
    assert present <= set(rank), f"packages missing from LAYERS: {sorted(present - set(rank))}"
    up = [f"{a} -> {b} ({where[0]})" for (a, b), where in _package_edges().items()
          if rank[b] > rank[a] and tuple(sorted((a, b))) not in KNOWN_TWO_WAY]
    assert not up, "imports up the layer order:\n" + "\n".join(sorted(up))


def test_the_ground_floor_holds_about_eight_modules():
    ground = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert ground == ["__init__", "__main__", "cli", "errors", "names", "optional", "preprocess", "progress", "recipes"]


def test_no_import_circle_even_through_lazy_imports():
    """build -> fallback -> build and report -> fallback were circles once; none may come back (lazy ones included)."""
    graph = _import_graph()
    circles = []
    for start in graph:
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start and len(path) > 1:
                    circles.append(" -> ".join(path + [start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
    assert not circles, "import circles:\n" + "\n".join(sorted(set(circles))[:10])


def test_no_code_outside_the_backends_tests_a_backend_name():
    """Ask the backend (its declared attributes and hooks); don't compare its name."""
    names = "|".join(("onnxruntime", "openvino", "tensorrt"))
    pattern = re.compile(rf"""(==|!=)\s*["']({names})["']|["']({names})["']\s*(==|!=)|["']({names})["']\s+(not\s+)?in\s+\w*\.?enabled_backends""")
    bad = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(BACKEND_HOMES):
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                bad.append(f"{rel}:{i}: {line.strip()}")
    assert not bad, "backend-name branches outside backends/ and tensorrt/:\n" + "\n".join(bad)


def test_no_private_name_is_imported_across_modules():
    """A `_name` is its module's business: another module that needs it gets a public name instead."""
    bad = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            ours = isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("resnext_deploy"))
            if not ours:
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    bad.append(f"{rel}:{node.lineno}: from {'.' * node.level}{node.module or ''} import {alias.name}")
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)
